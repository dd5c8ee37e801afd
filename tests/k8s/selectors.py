"""Label and field selectors, parsed the way the Kubernetes API server does (pure).

Label selector syntax (k8s.io/apimachinery/pkg/labels/selector.go, v0.30):
``a=b``, ``a==b``, ``a!=b``, ``a in (x,y)``, ``a notin (x,y)``, ``a``, ``!a``,
joined by commas. Field selectors (fields/selector.go) support ``=``, ``==``,
``!=`` only, on a per-resource list of fields; others are a 400.
"""

import re

from .errors import ApiError

_KEY = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
_VALUE = r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?"
_KEY_RE = re.compile(rf"^{_KEY}$")
_VALUE_RE = re.compile(rf"^{_VALUE}$")

# Fields each resource supports in field selectors, besides metadata.name and
# metadata.namespace (pkg/registry/core/*/strategy.go, ToSelectableFields).
SELECTABLE_FIELDS = {
    "pods": {
        "spec.nodeName",
        "spec.restartPolicy",
        "spec.schedulerName",
        "spec.serviceAccountName",
        "spec.hostNetwork",
        "status.phase",
        "status.podIP",
        "status.nominatedNodeName",
    },
    "events": {
        "involvedObject.kind",
        "involvedObject.namespace",
        "involvedObject.name",
        "involvedObject.uid",
        "involvedObject.apiVersion",
        "involvedObject.resourceVersion",
        "involvedObject.fieldPath",
        "reason",
        "reportingComponent",
        "source",
        "type",
    },
    "secrets": {"type"},
    "namespaces": {"status.phase"},
    "nodes": {"spec.unschedulable"},
}


def _split_top_level(text):
    """Split on commas that are not inside parentheses."""
    parts, depth, current = [], 0, []
    for char in text:
        if char == "(":
            depth += 1
        elif char == ")":
            depth -= 1
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def _bad_selector(kind, text, why):
    return ApiError(
        400, "BadRequest", f"unable to parse requirement: {kind} selector {text!r}: {why}"
    )


def _check_key(key, text):
    if not _KEY_RE.match(key) or len(key.split("/")[-1]) > 63:
        raise _bad_selector("label", text, f"invalid label key {key!r}")


def _check_value(value, text):
    if len(value) > 63 or not _VALUE_RE.match(value):
        raise _bad_selector("label", text, f"invalid label value {value!r}")


_SET_RE = re.compile(r"^(?P<key>\S+)\s+(?P<op>in|notin)\s*\((?P<values>[^()]*)\)$")


def parse_label_selector(text):
    """Parse a label selector into a list of ``(key, op, values)`` requirements.

    ``op`` is one of ``in``, ``notin``, ``exists``, ``!exists``; ``=``/``==`` become
    ``in`` with one value and ``!=`` becomes ``notin``. Raises a 400 ApiError.
    """
    requirements = []
    for part in _split_top_level(text or ""):
        match = _SET_RE.match(part)
        if match:
            key = match["key"]
            values = [v.strip() for v in match["values"].split(",")]
            if not values or values == [""]:
                raise _bad_selector(
                    "label", text, "for 'in', 'notin' operators, values set can't be empty"
                )
            for v in values:
                _check_value(v, text)
            _check_key(key, text)
            requirements.append((key, match["op"], frozenset(values)))
            continue
        if "!=" in part:
            key, value = (s.strip() for s in part.split("!=", 1))
            op = "notin"
        elif "==" in part:
            key, value = (s.strip() for s in part.split("==", 1))
            op = "in"
        elif "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            op = "in"
        elif part.startswith("!"):
            key = part[1:].strip()
            _check_key(key, text)
            requirements.append((key, "!exists", frozenset()))
            continue
        else:
            key = part
            _check_key(key, text)
            requirements.append((key, "exists", frozenset()))
            continue
        _check_key(key, text)
        _check_value(value, text)
        requirements.append((key, op, frozenset([value])))
    return requirements


def labels_match(requirements, labels):
    """Whether a labels dict satisfies every parsed requirement."""
    labels = labels or {}
    for key, op, values in requirements:
        present = key in labels
        if op == "exists" and not present:
            return False
        if op == "!exists" and present:
            return False
        if op == "in" and (not present or labels[key] not in values):
            return False
        if op == "notin" and present and labels[key] in values:
            return False
    return True


def parse_field_selector(text, resource):
    """Parse a field selector into ``(field, equal: bool, value)`` requirements.

    Raises a 400 ApiError for syntax errors and for fields the resource does not
    support, with the API server's wording ("field label not supported").
    """
    requirements = []
    allowed = {"metadata.name", "metadata.namespace"} | SELECTABLE_FIELDS.get(resource, set())
    for part in _split_top_level(text or ""):
        if "!=" in part:
            field, value = part.split("!=", 1)
            equal = False
        elif "==" in part:
            field, value = part.split("==", 1)
            equal = True
        elif "=" in part:
            field, value = part.split("=", 1)
            equal = True
        else:
            raise ApiError(
                400, "BadRequest", f"invalid selector: {text!r}; can't understand {part!r}"
            )
        field = field.strip()
        if field not in allowed:
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")
        requirements.append((field, equal, value.strip()))
    return requirements


def field_value(obj, field):
    """The string value of a dotted field of an object ("" when absent)."""
    value = obj
    for part in field.split("."):
        if not isinstance(value, dict):
            return ""
        value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        # events' "source" selects on source.component
        return str(value.get("component", ""))
    return str(value)


def fields_match(requirements, obj):
    """Whether an object satisfies every parsed field requirement."""
    for field, equal, value in requirements:
        if (field_value(obj, field) == value) != equal:
            return False
    return True


class Selector:
    """A parsed label + field selector, for list, watch and deletecollection."""

    def __init__(self, resource, label_selector=None, field_selector=None):
        self.labels = parse_label_selector(label_selector)
        self.fields = parse_field_selector(field_selector, resource)

    def __bool__(self):
        return bool(self.labels or self.fields)

    def matches(self, obj):
        if obj is None:
            return False
        return labels_match(self.labels, obj["metadata"].get("labels")) and fields_match(
            self.fields, obj
        )
