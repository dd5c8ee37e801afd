"""Image and build pod names for (repository, commit) (pure).

Names are BinderHub's (``binderhub/builder.py``, 2026-04, b9fad99:
``_safe_build_slug`` and the ``image_name`` built in ``BuildHandler.get``),
so a hub pointed at a registry a BinderHub filled reuses its images:

1. the provider's build slug (``org-repo`` for ``gh/org/repo``) is escaped
   with ``escapism`` (safe: ASCII letters and digits, escape character ``-``),
2. cut to ``255 - len(prefix) - 7`` characters,
3. ``-`` and the first 6 hex digits of sha256(slug) appended, lower-cased,
4. prefixed with ``image_prefix`` and tagged with the commit; ``_`` becomes
   ``-`` and everything is lower-cased.

``gh/binder-examples/octave`` at ``1479e02...`` with no prefix is
``binder-2dexamples-2doctave-03025a:1479e0252b2e648bb755ee913292b79495931717``.
"""

import hashlib
import re
import string

import escapism

_SAFE = set(string.ascii_letters + string.digits)

#: Longest image name (without tag) accepted by registries.
IMAGE_NAME_LIMIT = 255
#: Longest Kubernetes object name that is also a DNS label.
DNS_LABEL_LIMIT = 63


def safe_slug(slug, limit, hash_length=6):
    """``slug`` escaped to ``[a-z0-9-]``, cut so that it plus ``-<hash>`` fits ``limit``."""
    digest = hashlib.sha256(slug.encode("utf-8")).hexdigest()
    escaped = escapism.escape(slug, safe=_SAFE, escape_char="-")
    return f"{escaped[: limit - hash_length - 1]}-{digest[:hash_length]}".lower()


def repo_hash(repo_key):
    """A label-safe identifier of a repository (the raw URL never goes in a label)."""
    return hashlib.sha256(repo_key.encode("utf-8")).hexdigest()[:16]


def _build_slug(spec):
    if isinstance(spec, str):
        from .providers import build_slug_for_spec

        return build_slug_for_spec(spec)
    return spec.build_slug


def image_name(spec, commit, prefix=""):
    """``"<prefix><safe slug>:<commit>"`` for a :class:`~binder_spawner.repos.LaunchSpec` or spec string.

    ``prefix`` is the registry and repository prefix, e.g.
    ``"registry.example.org/binder-"`` (BinderHub's ``image_prefix``).
    """
    if not commit:
        raise ValueError("an image name needs the commit")
    slug = safe_slug(_build_slug(spec), limit=IMAGE_NAME_LIMIT - len(prefix))
    return f"{prefix}{slug}:{commit}".replace("_", "-").lower()


def names_repository(image, spec):
    """True if ``image`` is an :func:`image_name` of ``spec``'s repository, with any prefix and tag.

    The name ends with ``-`` and the slug's hash, after the escaped slug as far
    as the prefix left room for it (a name is cut to :data:`IMAGE_NAME_LIMIT`).
    """
    name = image.lower()
    last = name.rsplit("/", 1)[-1]
    if "@" in last:
        name = name.split("@", 1)[0]
    elif ":" in last:
        name = name.rsplit(":", 1)[0]
    slug = _build_slug(spec)
    digest = hashlib.sha256(slug.encode("utf-8")).hexdigest()[:6]
    if not name.endswith("-" + digest):
        return False
    body = name[: -len(digest) - 1]
    escaped = escapism.escape(slug, safe=_SAFE, escape_char="-").replace("_", "-").lower()
    if body.endswith(escaped):
        return True
    # cut: the prefix took the room of the slug's end
    cut = IMAGE_NAME_LIMIT - len(digest) - 1
    return len(body) == cut and any(body[start:] == escaped[: cut - start] for start in range(cut))


def split_image(image):
    """``(registry host or "", repository path, tag)`` of an image reference.

    The first path component is a registry when it has a ``.`` or ``:`` or is
    ``localhost`` (the rule docker uses).
    """
    name, tag = image, "latest"
    last = image.rsplit("/", 1)[-1]
    if "@" in last:
        name, tag = image.split("@", 1)
    elif ":" in last:
        name, tag = image.rsplit(":", 1)
    first, sep, rest = name.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        return first, rest, tag
    return "", name, tag


def build_pod_name(image, prefix="build-"):
    """A DNS-safe (``[a-z0-9-]``, at most 63 characters) build pod name for ``image``.

    Deterministic, so every launch of the same image finds the same build pod:
    ``build-<image name, cut>-<hash of the whole reference>-<first 6 of the tag>``.
    """
    _, repository, tag = split_image(image)
    base = repository.rsplit("/", 1)[-1]
    tag_part = _dns_chars(tag)[:6].strip("-") or "0"
    budget = DNS_LABEL_LIMIT - len(prefix) - len(tag_part) - 1
    # hash the whole reference so different registries/paths never share a build pod
    digest = hashlib.sha256(f"{repository}:{tag}".encode()).hexdigest()[:6]
    name = f"{prefix}{_dns_chars(base)[: budget - 7]}".rstrip("-")
    return f"{name}-{digest}-{tag_part}"


def _dns_chars(text):
    # image names are already [a-z0-9._-] (BinderHub's are [a-z0-9-]): map the rest to "-"
    return re.sub(r"[^a-z0-9-]", "-", text.lower())
