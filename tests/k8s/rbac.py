"""Optional authentication and RBAC authorization for the emulated API server.

Bearer tokens map to users: the cluster's admin token is ``kubernetes-admin`` in
``system:masters`` (allowed everything, as with a kubeadm admin.conf), and
:meth:`Authorizer.issue_token` gives a service account its token. With
enforcement on, each request's attributes (verb, API group, resource,
subresource, namespace, name) are checked against the Roles/ClusterRoles bound
to the user, as the RBAC authorizer does
(plugin/pkg/auth/authorizer/rbac/rbac.go, v1.30): a RoleBinding grants in its
namespace, a ClusterRoleBinding everywhere; subjects are ServiceAccounts, Users
and Groups (``system:serviceaccounts``, ``system:serviceaccounts:<ns>``,
``system:authenticated``). Discovery paths are open to every authenticated
user (``system:discovery``).
"""

import secrets
from dataclasses import dataclass, field

from .errors import ApiError


@dataclass
class User:
    name: str
    groups: list = field(default_factory=list)
    service_account: tuple = None  # (namespace, name)


def _matches(values, wanted):
    return "*" in values or wanted in values


def rule_allows(rule, info):
    """Whether one PolicyRule grants the request described by ``info`` (a RequestInfo)."""
    if not _matches(rule.get("verbs") or [], info.verb):
        return False
    if not _matches(rule.get("apiGroups") or [], info.api_group):
        return False
    resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
    resources = rule.get("resources") or []
    if not (
        "*" in resources
        or resource in resources
        or (info.subresource and f"*/{info.subresource}" in resources)
        or (info.subresource and f"{info.resource}/*" in resources)
    ):
        return False
    names = rule.get("resourceNames") or []
    if names and info.name not in names:
        # create and the collection verbs have no name, so resourceNames never match them
        return False
    return True


class Authorizer:
    """Tokens -> users, and RBAC checks against the store's Role(Binding)s."""

    def __init__(self, store, *, admin_token=None, enforce=True):
        self.store = store
        self.enforce = enforce
        self.admin_token = admin_token or secrets.token_hex(16)
        self.tokens = {
            self.admin_token: User("kubernetes-admin", ["system:masters", "system:authenticated"])
        }

    def issue_token(self, namespace, service_account, create=True):
        """A bearer token for ``system:serviceaccount:<namespace>:<service_account>``."""
        if create and not self.store.exists("serviceaccounts", namespace, service_account):
            self.store.create(
                "serviceaccounts", {"metadata": {"name": service_account}}, namespace=namespace
            )
        token = secrets.token_hex(16)
        self.tokens[token] = User(
            f"system:serviceaccount:{namespace}:{service_account}",
            [
                "system:serviceaccounts",
                f"system:serviceaccounts:{namespace}",
                "system:authenticated",
            ],
            (namespace, service_account),
        )
        return token

    def authenticate(self, header):
        if not header:
            if self.enforce:
                raise ApiError(401, "Unauthorized", "Unauthorized")
            return None
        scheme, _, token = header.partition(" ")
        user = self.tokens.get(token.strip()) if scheme.lower() == "bearer" else None
        if user is None and self.enforce:
            raise ApiError(401, "Unauthorized", "Unauthorized")
        return user

    def _subject_matches(self, subject, user, binding_namespace):
        kind = subject.get("kind")
        if kind == "ServiceAccount":
            ns = subject.get("namespace") or binding_namespace
            return user.service_account == (ns, subject.get("name"))
        if kind == "User":
            return subject.get("name") == user.name
        if kind == "Group":
            return subject.get("name") in user.groups
        return False

    def _role_rules(self, role_ref, namespace):
        kind, name = role_ref.get("kind"), role_ref.get("name")
        try:
            if kind == "ClusterRole":
                role = self.store.get("clusterroles", None, name)
            else:
                role = self.store.get("roles", namespace, name)
        except ApiError:
            return []
        return role.get("rules") or []

    def allowed(self, user, info):
        if "system:masters" in user.groups:
            return True
        for binding in self.store.select("clusterrolebindings"):
            if any(self._subject_matches(s, user, None) for s in binding.get("subjects") or []):
                if any(rule_allows(r, info) for r in self._role_rules(binding["roleRef"], None)):
                    return True
        if info.namespace:
            for binding in self.store.select("rolebindings", namespace=info.namespace):
                if any(
                    self._subject_matches(s, user, info.namespace)
                    for s in binding.get("subjects") or []
                ):
                    if any(
                        rule_allows(r, info)
                        for r in self._role_rules(binding["roleRef"], info.namespace)
                    ):
                        return True
        return False

    def authorize(self, user, info):
        """Raise a 403 Status unless ``user`` may make the request (no-op when not enforcing)."""
        if not self.enforce:
            return
        if not info.is_resource:
            return  # discovery and /version: system:discovery grants them to everyone
        if self.allowed(user, info):
            return
        resource = f"{info.resource}/{info.subresource}" if info.subresource else info.resource
        where = (
            f' in the namespace "{info.namespace}"' if info.namespace else " at the cluster scope"
        )
        what = f'{info.resource} "{info.name}"' if info.name else info.resource
        raise ApiError(
            403,
            "Forbidden",
            f'{what} is forbidden: User "{user.name}" cannot {info.verb} resource "{resource}" '
            f'in API group "{info.api_group}"{where}',
            details={"name": info.name, "group": info.api_group, "kind": info.resource},
        )
