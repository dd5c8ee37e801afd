"""jupyterhub-binder on one machine: ``jupyterhub -f jupyterhub_config.py`` (``make run``).

Without Kubernetes configuration (no in-cluster service account, no
``KUBECONFIG``, no ``~/.kube/config``) this is local mode: LocalBinderSpawner
builds each repository into a per-commit virtual environment with uv and runs
the server in a bubblewrap sandbox; with it, BinderSpawner builds images with
repo2docker in build pods. Both use the anonymous authenticator (no login) and
binder_service (culling, limits, launch links).

Environment variables for the common changes (see the README):

- ``BINDER_PORT``: public port on 127.0.0.1 (default 8000).
- ``BINDER_IP``: public address (default 127.0.0.1; ``0.0.0.0`` to serve others).
- ``BINDER_ALLOWED_HOSTS``: comma-separated repository hosts, ``host`` or
  ``host:port``, allowed although they resolve to private or loopback
  addresses (e.g. a git server on the LAN); they may use plain ``http://``.
- ``BINDER_STATE_DIR``: where the hub database and the environments live
  (default ``/var/lib/jupyterhub-binder`` when the hub runs as root, so the
  sandbox uids can reach it wherever the checkout is; ``./state`` otherwise).
- ``BINDER_SERVICE_PORT``: loopback port of binder_service (default 10101).
- ``BINDER_IMAGE_PREFIX`` (Kubernetes mode, required): registry and name prefix
  of built images, e.g. ``registry.example.org/binder/r2d-``.
- ``BINDER_REGISTRY`` (Kubernetes mode): URL of the registry's API when it is
  not ``https://`` and the host of the prefix, e.g. ``http://registry.local:5000``.
- ``BINDER_HUB_PORT``: loopback port of the hub itself (default 8081).
- ``BINDER_PROXY_API_PORT``: loopback port of the proxy's API (default 8001).
- ``BINDER_UID_BASE`` (local mode as root): first uid of the range the sandboxes
  run as (default 2000000, ``c.Sandbox.uid_base``).

A second hub on the same machine needs its own ``BINDER_PORT``,
``BINDER_STATE_DIR``, the three loopback ports and, as root, ``BINDER_UID_BASE``
(at least 1000000 away); the hub refuses to start if one of them is taken.
"""

import os
import socket
import sys
from urllib.parse import urlparse

from binder_service.hubconfig import hand_over
from binder_service.permissions import service_role

c = get_config()  # noqa: F821


def _env_list(name):
    return [item.strip() for item in os.environ.get(name, "").split(",") if item.strip()]


def _kubernetes_configured():
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return True
    kubeconfig = os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    return any(os.path.exists(path) for path in kubeconfig.split(os.pathsep) if path)


def _answers(host, port):
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex((host, port)) == 0


def _proxy_of_a_previous_run(pid_file):
    """True if ``pid_file`` names a living process: our proxy, left by a hub that
    crashed, which JupyterHub stops before it starts its own."""
    try:
        with open(pid_file) as f:
            os.kill(int(f.read().strip()), 0)
    except (OSError, ValueError):
        return False
    return True


# -- the hub ------------------------------------------------------------------

c.JupyterHub.ip = os.environ.get("BINDER_IP", "127.0.0.1")
c.JupyterHub.port = int(os.environ.get("BINDER_PORT", "8000"))
# the hub's and the proxy API's loopback ports: JupyterHub's defaults unless set
if "BINDER_HUB_PORT" in os.environ:
    c.JupyterHub.hub_port = int(os.environ["BINDER_HUB_PORT"])
if "BINDER_PROXY_API_PORT" in os.environ:
    c.ConfigurableHTTPProxy.api_url = f"http://127.0.0.1:{int(os.environ['BINDER_PROXY_API_PORT'])}"
default_state_dir = "/var/lib/jupyterhub-binder" if os.geteuid() == 0 else "state"
state_dir = os.path.abspath(os.environ.get("BINDER_STATE_DIR", default_state_dir))
# the hub's own files: private to the hub's user
hub_dir = os.path.join(state_dir, "hub")
os.makedirs(hub_dir, mode=0o700, exist_ok=True)
os.chmod(hub_dir, 0o700)
c.JupyterHub.db_url = "sqlite:///" + os.path.join(hub_dir, "jupyterhub.sqlite")
c.JupyterHub.cookie_secret_file = os.path.join(hub_dir, "jupyterhub_cookie_secret")
c.ConfigurableHTTPProxy.pid_file = os.path.join(hub_dir, "jupyterhub-proxy.pid")
# the state directory itself must be searchable (not readable) by the sandbox uids,
# which mount their environment and home from below it
os.makedirs(state_dir, exist_ok=True)
os.chmod(state_dir, 0o711)

# -- anonymous users --------------------------------------------------------------

c.JupyterHub.authenticator_class = "binder-anonymous"
# a second launch link in the same browser starts a second server (docs/authenticator.md)
c.JupyterHub.allow_named_servers = True
# named servers a user may have on record, stopped or not (as the chart values'
# hub.namedServerLimitPerUser): without a limit, each refused launch through the
# REST API under a new name adds a server to the hub's database
c.JupyterHub.named_server_limit_per_user = 3

# -- the spawner ------------------------------------------------------------------

kubernetes = _kubernetes_configured()
if kubernetes:
    c.JupyterHub.spawner_class = "binder"
    # where built images are pushed and looked up; without a prefix no launch can build
    image_prefix = os.environ.get("BINDER_IMAGE_PREFIX", "")
    if not image_prefix:
        sys.exit(
            "Kubernetes mode needs a registry for the images it builds: set BINDER_IMAGE_PREFIX "
            "(e.g. registry.example.org/binder/r2d-), and BINDER_REGISTRY if the registry's "
            "API is reached at another address (e.g. http://registry.local:5000)."
        )
    c.BinderSpawner.image_prefix = image_prefix
    if os.environ.get("BINDER_REGISTRY"):
        c.BinderSpawner.registry_url = os.environ["BINDER_REGISTRY"]
else:
    c.JupyterHub.spawner_class = "binder-local"
    local_dir = os.path.join(state_dir, "local")
    os.makedirs(local_dir, mode=0o711, exist_ok=True)
    c.EnvironmentBuilder.envs_dir = os.path.join(local_dir, "envs")
    c.EnvironmentBuilder.cache_dir = os.path.join(local_dir, "cache")
    # the hub's "server not running" page says why a server was stopped (memory limit)
    from binder_spawner.local import TEMPLATES, stop_reasons

    c.JupyterHub.template_paths = [TEMPLATES]
    c.JupyterHub.template_vars = {"binder_stop_reason": stop_reasons}
    # the build happens inside start(): give it the time a build takes
    # (BinderSpawner's own defaults cover build_timeout in Kubernetes mode)
    c.LocalBinderSpawner.start_timeout = 1800
    c.LocalBinderSpawner.http_timeout = 120

allowed_hosts = _env_list("BINDER_ALLOWED_HOSTS")
if allowed_hosts:
    c.RepoPolicy.allowed_hosts = allowed_hosts
    # a git server on the LAN rarely has a certificate
    c.RepoPolicy.allow_http = True

# -- binder_service: culling, limits, launch links ---------------------------------

service_port = int(os.environ.get("BINDER_SERVICE_PORT", "10101"))
service_command = [sys.executable, "-m", "binder_service"]
if kubernetes:
    service_command.append("--kubernetes")
service_environment = {}
if kubernetes:
    # the hub starts services with a clean environment: hand over what locates the cluster
    if not os.environ.get("KUBERNETES_SERVICE_HOST"):
        service_environment["KUBECONFIG"] = os.environ.get("KUBECONFIG") or os.path.expanduser(
            "~/.kube/config"
        )
    for name in ("KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "POD_NAMESPACE"):
        if os.environ.get(name):
            service_environment[name] = os.environ[name]
binder_service = {
    "name": "binder",
    "url": f"http://127.0.0.1:{service_port}",
    "command": service_command,
    "environment": service_environment,
}
c.JupyterHub.services.append(binder_service)
# exactly what the service uses (docs/permissions.md explains each scope)
c.JupyterHub.load_roles.append(service_role())
c.BinderServiceClient.url = f"http://127.0.0.1:{service_port}/services/binder/"

# -- one configuration for the hub and the service --------------------------------

# the service's RepoPolicy, idle and age limits, anonymous group and pod memory
# are the hub's (c.RepoPolicy, the spawner's idle_timeout, max_age and
# mem_guarantee, c.AnonymousAuthenticator.group), handed over when the hub
# starts the service as BINDER_SERVICE_CONFIG (binder_service.hubconfig)
hand_over(binder_service)

# -- a second hub on this machine: refuse to start rather than share ports ---------

# Another hub's proxy on our proxy API port would get our routes (or refuse our
# token) and another hub's service would get our reservations; JupyterHub does
# not check before it starts (it stops only a proxy named in its own pid file).
_ports = {
    "BINDER_HUB_PORT": ("127.0.0.1", c.JupyterHub.hub_port if "hub_port" in c.JupyterHub else 8081),
    "BINDER_SERVICE_PORT": ("127.0.0.1", service_port),
}
if not _proxy_of_a_previous_run(c.ConfigurableHTTPProxy.pid_file):
    _api_url = urlparse(c.ConfigurableHTTPProxy.get("api_url", "http://127.0.0.1:8001"))
    _ports["BINDER_PROXY_API_PORT"] = (_api_url.hostname, _api_url.port)
_taken = [f"{name}={port}" for name, (host, port) in _ports.items() if _answers(host, port)]
if _taken:
    sys.exit(
        f"Another program already listens on {', '.join(_taken)}: another hub, or the "
        "binder_service of a hub that was killed. To run a second hub on this machine, "
        "set these environment variables to free ports."
    )

# -- local mode: refuse to start rather than fail every launch ----------------------

if not kubernetes:
    from binder_spawner.local import check_local_mode

    if "BINDER_UID_BASE" in os.environ:
        c.Sandbox.uid_base = int(os.environ["BINDER_UID_BASE"])

    # the sandbox uids must reach the environments; as root, cgroups must enforce
    # the limits (or c.Sandbox.require_cgroups = False, set before this file is
    # loaded): said once, to the admin, instead of a failure for every visitor
    check_local_mode(c)
