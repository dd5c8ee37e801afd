"""Kubernetes API errors and their ``Status`` bodies (pure)."""


class ApiError(Exception):
    """An API failure: HTTP status, Kubernetes reason and a message.

    ``status()`` is the ``v1 Status`` body the real API server sends, e.g.
    ``{"kind": "Status", "status": "Failure", "reason": "NotFound", "code": 404,
    "message": 'pods "x" not found', "details": {"name": "x", "kind": "pods"}}``.
    """

    def __init__(self, code, reason, message, *, details=None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details or {}

    def status(self):
        body = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details:
            body["details"] = self.details
        return body


def not_found(resource, name, group=""):
    kind = f"{resource}.{group}" if group else resource
    return ApiError(
        404,
        "NotFound",
        f'{kind} "{name}" not found',
        details={"name": name, "group": group, "kind": resource},
    )


def already_exists(resource, name, group=""):
    kind = f"{resource}.{group}" if group else resource
    return ApiError(
        409,
        "AlreadyExists",
        f'{kind} "{name}" already exists',
        details={"name": name, "group": group, "kind": resource},
    )


def conflict(resource, name, group="", why=None):
    kind = f"{resource}.{group}" if group else resource
    why = (
        why
        or "the object has been modified; please apply your changes to the latest version and try again"
    )
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {kind} "{name}": {why}',
        details={"name": name, "group": group, "kind": resource},
    )


def invalid(kind, name, causes):
    """A 422: ``causes`` is a list of ``(field, message)``."""
    text = "; ".join(f"{field}: {message}" if field else message for field, message in causes)
    return ApiError(
        422,
        "Invalid",
        f'{kind} "{name}" is invalid: {text}',
        details={
            "name": name,
            "kind": kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes
            ],
        },
    )


def gone(message):
    return ApiError(410, "Expired", message)


def bad_request(message):
    return ApiError(400, "BadRequest", message)
