"""One string from a query or form value (pure).

tornado hands query and form data as ``{name: [values]}``, the values bytes
(``request.query_arguments``) or str (JupyterHub's ``formdata``); a
``user_options`` dict holds plain strings. Every reader of a launch link
(the authenticator's router, the spawner's form and query options,
:meth:`binder_spawner.repos.RepoPolicy.parse`) takes the same value through
:func:`first_value`, so they cannot disagree on which ``repo=`` a link means.
"""


def first_value(value, name=None):
    """The first string of ``value``; bytes are decoded as UTF-8.

    Lenient (``name`` None): an empty list, ``None`` or a non-string gives
    ``""``, undecodable bytes are replaced. Strict (``name`` given, for
    parsing a launch): anything but exactly one valid UTF-8 string raises
    ``ValueError`` with a sentence naming ``name``.
    """
    if isinstance(value, (list, tuple)):
        if name is not None and len(value) != 1:
            raise ValueError(f"Give exactly one value for {name}.")
        value = value[0] if value else ""
    if isinstance(value, bytes):
        if name is None:
            value = value.decode("utf-8", "replace")
        else:
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError:
                raise ValueError(f"The {name} is not valid UTF-8.") from None
    if not isinstance(value, str):
        if name is not None:
            raise ValueError(f"The {name} must be a string.")
        return ""
    return value


def first_values(data):
    """``{name: first_value(values)}`` for form or query data."""
    return {key: first_value(values) for key, values in data.items()}
