"""Validation of every object the emulator stores, so nothing passes here that a cluster rejects.

Two layers, both answering 422 ``Invalid`` with the API server's wording:

- the OpenAPI schema of one Kubernetes version, strict (no unknown fields), from
  the ``kubernetes-validate`` package: the same check as
  ``kubernetes_validate.validate(obj, version, strict=True)``, with the compiled
  schema cached per kind (the package re-reads its files on every call);
- the format rules the schema cannot express and clients most often get wrong:
  object names (DNS-1123 subdomain or label), label keys and values, annotation
  keys, container, port, volume and environment variable names, resource
  quantities and requests above limits, mounts of undeclared volumes
  (pkg/apis/core/validation/validation.go, v1.30).
"""

import functools
import re

import jsonschema
import kubernetes_validate
import referencing
from kubernetes_validate import utils as kv_utils

from .errors import invalid

DEFAULT_VERSION = "1.30"

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

# resources whose names must be DNS-1123 labels rather than subdomains
_LABEL_NAMED = {"namespaces", "services"}
# RBAC objects only need a valid path segment
_PATH_SEGMENT_NAMED = {"roles", "rolebindings", "clusterroles", "clusterrolebindings"}


def _schema_version(version):
    wanted = kv_utils.major_minor(version)
    return [v for v in kv_utils.all_versions() if kv_utils.major_minor(v) <= wanted][-1]


@functools.cache
def _validator(kind, api_version, version):
    """A compiled strict schema validator for one kind, or None if the package has no schema."""
    schema_version = _schema_version(version)
    group_version = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    directory = f"kubernetes-json-schema/v{schema_version}-local-strict"
    try:
        schema = kv_utils.schema_contents(
            f"{directory}/{kind.lower()}-{group_version}.json", version
        )
    except FileNotFoundError:
        return None
    definitions = kv_utils.schema_contents(f"{directory}/_definitions.json", version)
    registry = referencing.Resource.from_contents(schema) @ referencing.Registry()
    registry = referencing.Resource.from_contents(definitions) @ registry
    schema = _inline_refs(schema, definitions["$defs"])
    return jsonschema.validators.Draft202012Validator(schema, registry=registry)


def _inline_refs(node, definitions, stack=()):
    """Replace ``$ref``s to the shared definitions by their targets (recursive ones stay refs).

    The same verdicts, about twice as fast: the validator no longer resolves a
    reference for every nested object it checks.
    """
    if isinstance(node, list):
        return [_inline_refs(v, definitions, stack) for v in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and "/$defs/" in ref:
        name = ref.split("/$defs/", 1)[1]
        if name in stack:
            # recursive: keep the reference, made absolute for the registry
            return {**node, "$ref": f"/api/_definitions.json#/$defs/{name}"}
        if name in definitions:
            target = _inline_refs(definitions[name], definitions, stack + (name,))
            rest = {k: v for k, v in node.items() if k not in ("$ref", "description")}
            if not rest:
                return target
            return {"allOf": [target], **_inline_refs(rest, definitions, stack)}
    return {k: _inline_refs(v, definitions, stack) for k, v in node.items()}


def _name_errors(plural, name):
    if plural in _PATH_SEGMENT_NAMED:
        if name in (".", "..") or "/" in name or "%" in name:
            return [("metadata.name", f'Invalid value: "{name}": may not contain "/" or "%"')]
        return []
    if plural == "services" and (len(name) > 63 or not _DNS_1035_LABEL.match(name)):
        return [
            (
                "metadata.name",
                f'Invalid value: "{name}": a DNS-1035 label must consist of lower case alphanumeric '
                "characters or '-', start with an alphabetic character, and end with an alphanumeric character",
            )
        ]
    if plural in _LABEL_NAMED:
        if len(name) > 63 or not _DNS_LABEL.match(name):
            return [
                (
                    "metadata.name",
                    f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower case alphanumeric '
                    "characters or '-', and must start and end with an alphanumeric character",
                )
            ]
        return []
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return [
            (
                "metadata.name",
                f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower case alphanumeric '
                "characters, '-' or '.', and must start and end with an alphanumeric character",
            )
        ]
    return []


def _label_errors(labels):
    causes = []
    for key, value in (labels or {}).items():
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or (
            len(name) > 63 or not _QUALIFIED_NAME.match(name)
        ):
            causes.append(
                (
                    "metadata.labels",
                    f'Invalid value: "{key}": name part must consist of alphanumeric characters, '
                    "'-', '_' or '.', and must start and end with an alphanumeric character",
                )
            )
        if not isinstance(value, str) or len(value) > 63 or not _LABEL_VALUE.match(value):
            causes.append(
                (
                    "metadata.labels",
                    f'Invalid value: "{value}": a valid label must be an empty string or consist of alphanumeric '
                    "characters, '-', '_' or '.', and must start and end with an alphanumeric character "
                    "(max 63 characters)",
                )
            )
    return causes


_ENV_NAME = re.compile(r"^[-._a-zA-Z][-._a-zA-Z0-9]*$")
_PORT_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
_QUANTITY = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?\d+)?$")


def _quantity(value):
    from .scheduler import parse_quantity

    return parse_quantity(value)


def _container_errors(prefix, c):
    causes = []
    if not c.get("image"):
        causes.append((f"{prefix}.image", "Required value"))
    for n, env in enumerate(c.get("env") or []):
        name = env.get("name", "")
        if not _ENV_NAME.match(name):
            causes.append(
                (
                    f"{prefix}.env[{n}].name",
                    f'Invalid value: "{name}": a valid environment variable name must consist of alphabetic '
                    "characters, digits, '_', '-', or '.', and must not start with a digit",
                )
            )
    for n, port in enumerate(c.get("ports") or []):
        name = port.get("name")
        # IANA_SVC_NAME (validation.go validateContainerPorts)
        if name is not None and (
            len(name) > 15
            or not _PORT_NAME.match(name)
            or "--" in name
            or not re.search("[a-z]", name)
        ):
            causes.append(
                (
                    f"{prefix}.ports[{n}].name",
                    f'Invalid value: "{name}": must be no more than '
                    "15 characters, lower case alphanumerics and '-', with at least one letter",
                )
            )
    resources = c.get("resources") or {}
    for kind in ("requests", "limits"):
        for resource, value in (resources.get(kind) or {}).items():
            if not _QUANTITY.match(str(value)):
                causes.append(
                    (
                        f"{prefix}.resources.{kind}[{resource}]",
                        f'Invalid value: "{value}": quantities must match the regular expression '
                        "'^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'",
                    )
                )
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for resource in set(requests) & set(limits):
        try:
            if _quantity(requests[resource]) > _quantity(limits[resource]):
                causes.append(
                    (
                        f"{prefix}.resources.requests",
                        f'Invalid value: "{requests[resource]}": must be less than or equal to {resource} limit '
                        f"of {limits[resource]}",
                    )
                )
        except ValueError:
            pass  # reported above
    return causes


def _annotation_errors(annotations):
    causes = []
    for key in annotations or {}:
        prefix, _, name = key.rpartition("/")
        if (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix))) or (
            len(name) > 63 or not _QUALIFIED_NAME.match(name)
        ):
            causes.append(
                (
                    "metadata.annotations",
                    f'Invalid value: "{key}": name part must consist of '
                    "alphanumeric characters, '-', '_' or '.'",
                )
            )
    if sum(len(k) + len(str(v)) for k, v in (annotations or {}).items()) > 256 * 1024:
        causes.append(("metadata.annotations", "Too long: must have at most 262144 bytes"))
    return causes


def _pod_errors(obj):
    causes = []
    spec = obj.get("spec") or {}
    containers = spec.get("containers") or []
    if not containers:
        causes.append(("spec.containers", "Required value"))
    seen = set()
    for field in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(field) or []):
            name = c.get("name", "")
            if len(name) > 63 or not _DNS_LABEL.match(name):
                causes.append(
                    (f"spec.{field}[{i}].name", f'Invalid value: "{name}": must be a DNS label')
                )
            if name in seen:
                causes.append((f"spec.{field}[{i}].name", f'Duplicate value: "{name}"'))
            seen.add(name)
            causes += _container_errors(f"spec.{field}[{i}]", c)
    volumes = set()
    for i, volume in enumerate(spec.get("volumes") or []):
        name = volume.get("name", "")
        if len(name) > 63 or not _DNS_LABEL.match(name):
            causes.append(
                (f"spec.volumes[{i}].name", f'Invalid value: "{name}": must be a DNS label')
            )
        volumes.add(name)
    for field in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(field) or []):
            for n, mount in enumerate(c.get("volumeMounts") or []):
                if mount.get("name") not in volumes:
                    causes.append(
                        (
                            f"spec.{field}[{i}].volumeMounts[{n}].name",
                            f'Not found: "{mount.get("name")}"',
                        )
                    )
    return causes


class Validator:
    """``validator(resource_type, obj)`` raises a 422 ApiError for anything a cluster would reject.

    ``kubernetes_version`` picks the schema (e.g. "1.30"); strict mode rejects unknown fields.
    """

    def __init__(self, kubernetes_version=DEFAULT_VERSION):
        self.kubernetes_version = kubernetes_version
        if kv_utils.major_minor(kubernetes_version) > kubernetes_validate.latest_version():
            raise ValueError(
                f"kubernetes-validate has no schema for Kubernetes {kubernetes_version}"
            )

    def __call__(self, rt, obj, old=None):
        """Validate ``obj``; with ``old`` (an update), only the top-level fields that changed.

        Checking only what changed is the same verdict for a valid ``old`` and keeps
        the kubelet's frequent status updates cheap (a full Pod schema check takes ms).
        """
        meta = obj.get("metadata") or {}
        name = meta.get("name", "")
        causes = []
        if old is None or meta != old.get("metadata"):
            causes += _name_errors(rt.plural, name) + _label_errors(meta.get("labels"))
            causes += _annotation_errors(meta.get("annotations"))
        if rt.plural == "pods" and (old is None or obj.get("spec") != old.get("spec")):
            causes += _pod_errors(obj)
        validator = _validator(rt.kind, rt.api_version, self.kubernetes_version)
        if validator is not None:
            error = self._schema_error(validator, obj, old)
            if error is not None:
                path = "".join(
                    f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path
                )
                causes.append((path.lstrip("."), error.message))
        if causes:
            raise invalid(rt.kind, name, causes)

    def _schema_error(self, validator, obj, old):
        properties = validator.schema.get("properties") or {}
        changed = None
        if old is not None and set(obj) <= set(properties):
            changed = [key for key in obj if obj[key] != old.get(key)]
        if changed is None:
            return jsonschema.exceptions.best_match(validator.iter_errors(obj))
        for key in changed:
            error = jsonschema.exceptions.best_match(
                validator.evolve(schema=properties[key]).iter_errors(obj[key])
            )
            if error is not None:
                error.path.appendleft(key)
                return error
        return None
