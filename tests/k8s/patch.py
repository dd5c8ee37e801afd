"""The three patch types of the Kubernetes API (pure).

- ``application/json-patch+json``: RFC 6902 operations.
- ``application/merge-patch+json``: RFC 7386, lists replaced whole.
- ``application/strategic-merge-patch+json``: like merge patch, but lists whose
  Go type declares ``patchStrategy:"merge"`` are merged item by item on their
  ``patchMergeKey`` (k8s.io/api/core/v1/types.go, v0.30), and ``$patch``
  directives (``delete``, ``replace``) and ``$deleteFromPrimitiveList/<field>``
  are honoured (k8s.io/apimachinery/pkg/util/strategicpatch/patch.go).
"""

from .errors import ApiError


def _clone(value):
    """A deep copy of JSON data (several times faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


JSON_PATCH = "application/json-patch+json"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

# field name -> merge key for the lists the emulated resources merge strategically.
# Keyed by field name alone: in the core/v1 and rbac/v1 types a field name has the
# same strategy wherever it appears. A value of None merges primitives as a set.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "hostAliases": "ip",
    "conditions": "type",
    "ownerReferences": "uid",
    "finalizers": None,
    "addresses": "type",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Container and service ports merge on different keys.
PORT_KEYS = {"containerPort", "port"}


def _bad(message):
    return ApiError(400, "BadRequest", message)


# ---------------------------------------------------------------- JSON patch


def _pointer(path):
    if path == "":
        return []
    if not path.startswith("/"):
        raise _bad(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc, parts, path):
    for part in parts:
        if isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError):
                raise ApiError(
                    422,
                    "Invalid",
                    f"the server rejected our request due to an error in our request: {path}",
                ) from None
        elif isinstance(doc, dict) and part in doc:
            doc = doc[part]
        else:
            raise ApiError(
                422, "Invalid", f"the server rejected our request: path {path!r} does not exist"
            )
    return doc


def _add(doc, parts, value, path):
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, list):
        index = len(parent) if last == "-" else int(last)
        if index > len(parent):
            raise ApiError(422, "Invalid", f"index out of range in JSON patch path {path!r}")
        parent.insert(index, value)
    elif isinstance(parent, dict):
        parent[last] = value
    else:
        raise ApiError(422, "Invalid", f"cannot add at {path!r}")
    return doc


def _remove(doc, parts, path):
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    try:
        if isinstance(parent, list):
            return parent.pop(int(last))
        return parent.pop(last)
    except (KeyError, IndexError, ValueError):
        raise ApiError(
            422, "Invalid", f"the server rejected our request: path {path!r} does not exist"
        ) from None


def json_patch(doc, operations):
    """Apply RFC 6902 operations to a copy of ``doc``."""
    if not isinstance(operations, list):
        raise _bad("json patch must be a list of operations")
    doc = _clone(doc)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise _bad(f"invalid JSON patch operation {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if kind == "add":
            doc = _add(doc, parts, _clone(op.get("value")), path)
        elif kind == "remove":
            _remove(doc, parts, path)
        elif kind == "replace":
            _resolve(doc, parts, path)
            if parts:
                _remove(doc, parts, path)
            doc = _add(doc, parts, _clone(op.get("value")), path)
        elif kind in ("move", "copy"):
            source = _pointer(op.get("from", ""))
            value = _clone(_resolve(doc, source, op.get("from")))
            if kind == "move":
                _remove(doc, source, op.get("from"))
            doc = _add(doc, parts, value, path)
        elif kind == "test":
            if _resolve(doc, parts, path) != op.get("value"):
                raise ApiError(422, "Invalid", f"testing value {path} failed")
        else:
            raise _bad(f"unknown JSON patch operation {kind!r}")
    return doc


# ---------------------------------------------------------------- merge patch


def merge_patch(doc, patch):
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return _clone(patch)
    result = _clone(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:
            result[key] = _clone(value)
    return result


# ---------------------------------------------------------------- strategic merge


def _merge_key(field, items):
    if field == "ports":
        for item in items:
            if isinstance(item, dict):
                return "containerPort" if "containerPort" in item else "port"
        return "port"
    return MERGE_KEYS.get(field, "")


def _strategic_list(field, original, patch):
    key = _merge_key(field, patch)
    if key == "":
        # no merge strategy: replace, dropping directive items
        return [_clone(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    original = _clone(original) if isinstance(original, list) else []
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_clone(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    if key is None:
        # a set of primitives (finalizers)
        for item in patch:
            if item not in original:
                original.append(item)
        return original
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            raise _bad(f"strategic merge patch: items of {field} need their merge key {key!r}")
        index = next(
            (n for n, o in enumerate(original) if isinstance(o, dict) and o.get(key) == item[key]),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                original.pop(index)
            continue
        if index is None:
            original.append(strategic_merge_patch({}, item))
        else:
            original[index] = strategic_merge_patch(original[index], item)
    return original


def strategic_merge_patch(doc, patch):
    """Apply a strategic merge patch to a copy of ``doc``."""
    if not isinstance(patch, dict):
        raise _bad("strategic merge patch must be a JSON object")
    if patch.get("$patch") == "replace":
        return {k: _clone(v) for k, v in patch.items() if k != "$patch"}
    if patch.get("$patch") == "delete":
        return {}
    result = _clone(doc) if isinstance(doc, dict) else {}
    for key, value in patch.items():
        if key == "$patch" or key == "$retainKeys" or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            result[field] = [v for v in result.get(field, []) if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value)
        elif isinstance(value, list):
            result[key] = _strategic_list(key, result.get(key), value)
        else:
            result[key] = value
    if "$retainKeys" in patch:
        retain = set(patch["$retainKeys"])
        result = {k: v for k, v in result.items() if k in retain}
    return result


def apply_patch(doc, patch, content_type):
    """Dispatch on the request's Content-Type; 415 for anything else."""
    content_type = (content_type or "").split(";")[0].strip()
    if content_type == JSON_PATCH:
        return json_patch(doc, patch)
    if content_type == MERGE_PATCH:
        return merge_patch(doc, patch)
    if content_type == STRATEGIC_MERGE_PATCH:
        return strategic_merge_patch(doc, patch)
    raise ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{JSON_PATCH}, {MERGE_PATCH}, {STRATEGIC_MERGE_PATCH}",
    )
