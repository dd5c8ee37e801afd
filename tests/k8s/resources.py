"""The emulated resource types and the server-side defaults they get (pure)."""

import random
import string
from dataclasses import dataclass


@dataclass(frozen=True)
class ResourceType:
    plural: str
    kind: str
    group: str  # "" for the core group
    version: str
    namespaced: bool
    short_names: tuple = ()
    # a /status subresource: the main resource ignores status, /status ignores the rest
    status_subresource: bool = False

    @property
    def api_version(self):
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self):
        return self.kind + "List"

    @property
    def verbs(self):
        return ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"]


RBAC = "rbac.authorization.k8s.io"

RESOURCES = {
    r.plural: r
    for r in [
        ResourceType("namespaces", "Namespace", "", "v1", False, ("ns",), True),
        ResourceType("nodes", "Node", "", "v1", False, ("no",), True),
        ResourceType("pods", "Pod", "", "v1", True, ("po",), True),
        ResourceType("events", "Event", "", "v1", True, ("ev",)),
        ResourceType("services", "Service", "", "v1", True, ("svc",), True),
        ResourceType("secrets", "Secret", "", "v1", True),
        ResourceType("configmaps", "ConfigMap", "", "v1", True, ("cm",)),
        ResourceType(
            "persistentvolumeclaims", "PersistentVolumeClaim", "", "v1", True, ("pvc",), True
        ),
        ResourceType("serviceaccounts", "ServiceAccount", "", "v1", True, ("sa",)),
        ResourceType("roles", "Role", RBAC, "v1", True),
        ResourceType("rolebindings", "RoleBinding", RBAC, "v1", True),
        ResourceType("clusterroles", "ClusterRole", RBAC, "v1", False),
        ResourceType("clusterrolebindings", "ClusterRoleBinding", RBAC, "v1", False),
    ]
}

# Subresources the API server routes (besides the /status of status_subresource types).
SUBRESOURCES = {("pods", "log"), ("pods", "binding")}

# The alphabet of generateName suffixes and of random names
# (k8s.io/apimachinery/pkg/util/rand/rand.go: no vowels, no confusable characters).
_NAME_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def random_suffix(rng=random, length=5):
    return "".join(rng.choice(_NAME_ALPHABET) for _ in range(length))


def _image_pull_policy(image):
    # pkg/apis/core/v1/defaults.go SetDefaults_Container: Always for :latest or no tag
    name = image.rsplit("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    if "@" in image:
        return "IfNotPresent"
    if ":" not in last or last.endswith(":latest"):
        return "Always"
    return "IfNotPresent"


def _default_container(container):
    container.setdefault("terminationMessagePath", "/dev/termination-log")
    container.setdefault("terminationMessagePolicy", "File")
    container.setdefault("imagePullPolicy", _image_pull_policy(container.get("image", "")))
    container.setdefault("resources", {})
    for port in container.get("ports") or []:
        port.setdefault("protocol", "TCP")


def qos_class(pod):
    """Guaranteed, Burstable or BestEffort (pkg/apis/core/helper/qos/qos.go)."""
    containers = pod.get("spec", {}).get("containers") or []
    requests_any = limits_all = False
    guaranteed = True
    for c in containers:
        res = c.get("resources") or {}
        req, lim = res.get("requests") or {}, res.get("limits") or {}
        if req or lim:
            requests_any = True
        for name in ("cpu", "memory"):
            if name not in lim or (name in req and req[name] != lim[name]):
                guaranteed = False
        limits_all = limits_all or bool(lim)
    if not requests_any:
        return "BestEffort"
    return "Guaranteed" if guaranteed and limits_all else "Burstable"


def apply_defaults(resource, obj, rng=random):
    """Fill the defaults the API server adds on create (a subset, the ones clients read)."""
    spec = (
        obj.setdefault("spec", {})
        if resource in ("pods", "services", "persistentvolumeclaims")
        else None
    )
    if resource == "pods":
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        spec.setdefault("securityContext", {})
        spec.setdefault("enableServiceLinks", True)
        spec.setdefault("priority", 0)
        spec.setdefault("preemptionPolicy", "PreemptLowerPriority")
        if "serviceAccountName" not in spec and "serviceAccount" not in spec:
            spec["serviceAccountName"] = "default"
        spec.setdefault("serviceAccount", spec.get("serviceAccountName"))
        tolerations = spec.setdefault("tolerations", [])
        # DefaultTolerationSeconds admission plugin
        for key in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable"):
            if not any(t.get("key") == key for t in tolerations):
                tolerations.append(
                    {
                        "key": key,
                        "operator": "Exists",
                        "effect": "NoExecute",
                        "tolerationSeconds": 300,
                    }
                )
        for c in spec.get("containers") or []:
            _default_container(c)
        for c in spec.get("initContainers") or []:
            _default_container(c)
        obj["status"] = {"phase": "Pending", "qosClass": qos_class(obj)}
    elif resource == "services":
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        if spec.get("clusterIP") != "None":
            spec.setdefault("clusterIP", f"10.96.{rng.randint(0, 255)}.{rng.randint(1, 254)}")
            spec.setdefault("clusterIPs", [spec["clusterIP"]])
        spec.setdefault("ipFamilies", ["IPv4"])
        spec.setdefault("ipFamilyPolicy", "SingleStack")
        spec.setdefault("internalTrafficPolicy", "Cluster")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))
        obj["status"] = {"loadBalancer": {}}
    elif resource == "secrets":
        obj.setdefault("type", "Opaque")
        string_data = obj.pop("stringData", None)
        if string_data:
            import base64

            data = obj.setdefault("data", {})
            for k, v in string_data.items():
                data[k] = base64.b64encode(v.encode()).decode()
    elif resource == "persistentvolumeclaims":
        # Behaves as if a dynamic provisioner bound it at once.
        spec.setdefault("volumeMode", "Filesystem")
        spec.setdefault(
            "volumeName", "pvc-" + "".join(rng.choice(string.hexdigits.lower()) for _ in range(12))
        )
        requests = (spec.get("resources") or {}).get("requests") or {}
        obj["status"] = {
            "phase": "Bound",
            "accessModes": spec.get("accessModes", []),
            "capacity": dict(requests),
        }
    elif resource == "namespaces":
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        labels = obj["metadata"].setdefault("labels", {})
        labels["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
        obj["status"] = {"phase": "Active"}
    elif resource == "serviceaccounts":
        pass
    return obj
