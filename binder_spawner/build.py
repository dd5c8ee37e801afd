"""Build pods that run repo2docker: pure manifests and log parsing, no I/O.

:func:`build_pod_manifest` returns the pod (a plain dict in the API's camelCase
form) that builds and pushes one image; :mod:`binder_spawner.builder` creates
it, streams its log and cleans up. Names and labels are deterministic so that
every launch of the same image finds the same pod: that is how concurrent
launches share one build and how a restarted hub re-attaches to it.
"""

from __future__ import annotations

import json
import re

from .images import repo_hash
from .nodes import rendezvous_rank

#: Labels and annotations the project puts on the objects it creates.
LABEL_PREFIX = "binder.jupyter.org/"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "jupyterhub-binder"
BUILD_COMPONENT = "binder-build"
REPO_HASH_LABEL = LABEL_PREFIX + "repo-hash"
COMMIT_LABEL = LABEL_PREFIX + "commit"
REPO_ANNOTATION = LABEL_PREFIX + "repo"
REPO_URL_ANNOTATION = LABEL_PREFIX + "repo-url"
IMAGE_ANNOTATION = LABEL_PREFIX + "image"

#: Build backends: the node's Docker daemon through its socket, or a remote
#: Docker/BuildKit endpoint reached through ``DOCKER_HOST``.
DOCKER_SOCKET = "docker-socket"
REMOTE = "remote"
BACKENDS = (DOCKER_SOCKET, REMOTE)

#: where repo2docker finds the push credentials (the dockerconfigjson secret)
DOCKER_CONFIG_DIR = "/root/.docker"

#: repo2docker's JSON log phases -> launch progress phases
R2D_PHASES = {
    "fetching": "building",
    "building": "building",
    "pushing": "pushing",
    "failed": "failed",
    "built": "built",
}


def repo2docker_command(repo_url, commit, image, *, appendix="", extra_args=()):
    """repo2docker's command line for building ``image`` from ``repo_url`` at ``commit``.

    The repository URL comes last, after ``--`` would be wrong for
    repo2docker's parser (``cmd`` is a REMAINDER), so it is the last
    positional and the URL was validated before (``http(s)://`` only).
    """
    command = [
        "jupyter-repo2docker",
        "--ref",
        commit,
        "--image",
        image,
        "--no-clean",
        "--no-run",
        "--json-logs",
        "--user-name",
        "jovyan",
        "--user-id",
        "1000",
        "--push",
    ]
    if appendix:
        command += ["--appendix", appendix]
    command += list(extra_args)
    command.append(repo_url)
    return command


def singleuser_requirement(jupyterhub_version):
    """The pip requirement that matches the hub: ``jupyterhub==5.5.0``.

    A development or pre-release hub gets ``jupyterhub>=X.Y.0b0,<X.Y+1`` (its
    exact version is usually not on PyPI): the single-user server only needs
    the same minor version's OAuth and API.
    """
    match = re.match(r"^(\d+)\.(\d+)\.(\d+)$", jupyterhub_version)
    if match:
        return f"jupyterhub=={jupyterhub_version}"
    match = re.match(r"^(\d+)\.(\d+)", jupyterhub_version)
    if not match:
        raise ValueError(f"not a JupyterHub version: {jupyterhub_version!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    return f"jupyterhub>={major}.{minor}.0b0,<{major}.{minor + 1}"


def singleuser_appendix(jupyterhub_version):
    """Dockerfile lines repo2docker appends: install ``jupyterhub-singleuser`` for the hub.

    Temporary users reach their server through the hub's OAuth, which needs
    ``jupyterhub-singleuser`` of the hub's version in the server's environment
    (``${NB_PYTHON_PREFIX}``, where repo2docker installs the notebook server).
    """
    requirement = singleuser_requirement(jupyterhub_version)
    return (
        f"# jupyterhub-singleuser matching the hub (JupyterHub {jupyterhub_version})\n"
        f'RUN ${{NB_PYTHON_PREFIX}}/bin/python -m pip install --no-cache-dir "{requirement}"\n'
    )


def build_node(nodes, repo_key):
    """The node ranked first for ``repo_key`` among ``nodes``, or None.

    Sticky builds: the same repository builds on the same node while it
    exists, so the node's Docker layer cache is reused.
    """
    ranked = rendezvous_rank(nodes, repo_key)
    return ranked[0] if ranked else None


def build_labels(repo_key, commit):
    return {
        COMPONENT_LABEL: BUILD_COMPONENT,
        MANAGED_BY_LABEL: MANAGED_BY,
        REPO_HASH_LABEL: repo_hash(repo_key),
        COMMIT_LABEL: commit,
    }


def build_pod_manifest(
    *,
    name,
    builder_image,
    command,
    repo_key,
    repo_url,
    commit,
    image,
    backend=DOCKER_SOCKET,
    docker_socket="/var/run/docker.sock",
    docker_host="",
    push_secret="",
    resources=None,
    node_selector=None,
    tolerations=(),
    preferred_node="",
    service_account="",
    extra_env=None,
    image_pull_secrets=(),
    active_deadline_seconds=None,
):
    """The build pod for ``image`` as an API dict.

    ``backend`` is :data:`DOCKER_SOCKET` (mount the node's socket at
    ``/var/run/docker.sock``) or :data:`REMOTE` (``DOCKER_HOST=docker_host``).
    ``push_secret`` names a ``kubernetes.io/dockerconfigjson`` secret mounted
    as ``/root/.docker/config.json``. ``preferred_node`` becomes a preferred
    node-affinity term of weight 100 on that node's hostname.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown build backend {backend!r}, expected one of {BACKENDS}")
    env = [{"name": "GIT_TERMINAL_PROMPT", "value": "0"}]
    volumes = []
    mounts = []
    if backend == DOCKER_SOCKET:
        volumes.append(
            {"name": "docker-socket", "hostPath": {"path": docker_socket, "type": "Socket"}}
        )
        mounts.append({"name": "docker-socket", "mountPath": "/var/run/docker.sock"})
    else:
        if not docker_host:
            raise ValueError("the remote build backend needs a docker_host")
        env.append({"name": "DOCKER_HOST", "value": docker_host})
    if push_secret:
        volumes.append(
            {
                "name": "docker-config",
                "secret": {
                    "secretName": push_secret,
                    "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
                },
            }
        )
        mounts.append({"name": "docker-config", "mountPath": DOCKER_CONFIG_DIR, "readOnly": True})
        env.append({"name": "DOCKER_CONFIG", "value": DOCKER_CONFIG_DIR})
    for key, value in sorted((extra_env or {}).items()):
        env.append({"name": key, "value": str(value)})

    container = {
        "name": "builder",
        "image": builder_image,
        "args": list(command),
        "env": env,
        "volumeMounts": mounts,
        "resources": resources or {},
        "securityContext": {"allowPrivilegeEscalation": False},
    }
    spec = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [container],
        "volumes": volumes,
        "tolerations": [dict(t) for t in tolerations],
    }
    if node_selector:
        spec["nodeSelector"] = dict(node_selector)
    if preferred_node:
        spec["affinity"] = {
            "nodeAffinity": {
                "preferredDuringSchedulingIgnoredDuringExecution": [
                    {
                        "weight": 100,
                        "preference": {
                            "matchExpressions": [
                                {
                                    "key": "kubernetes.io/hostname",
                                    "operator": "In",
                                    "values": [preferred_node],
                                }
                            ]
                        },
                    }
                ]
            }
        }
    if service_account:
        spec["serviceAccountName"] = service_account
    if image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in image_pull_secrets]
    if active_deadline_seconds:
        # the cluster stops a build the hub lost track of
        spec["activeDeadlineSeconds"] = int(active_deadline_seconds)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": build_labels(repo_key, commit),
            "annotations": {
                REPO_ANNOTATION: repo_key,
                REPO_URL_ANNOTATION: repo_url,
                IMAGE_ANNOTATION: image,
            },
        },
        "spec": spec,
    }


def parse_log_line(line):
    """One line of repo2docker's ``--json-logs`` output -> (phase, message).

    Plain-text lines (from a wrapper or an older repo2docker) count as
    ``building``; the message keeps no trailing newline.
    """
    text = line.decode("utf-8", "replace") if isinstance(line, bytes) else line
    text = text.rstrip("\r\n")
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict) and isinstance(data.get("message"), str):
            phase = R2D_PHASES.get(str(data.get("phase", "building")), "building")
            return phase, data["message"].rstrip("\r\n")
    return "building", text


def pod_outcome(pod):
    """``(finished, succeeded, reason)`` of a build pod (an API dict)."""
    status = (pod or {}).get("status") or {}
    phase = status.get("phase")
    reason = status.get("reason") or ""
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated:
            reason = terminated.get("reason") or reason
            if terminated.get("exitCode") not in (None, 0):
                reason = f"{reason or 'Error'} (exit code {terminated['exitCode']})"
        waiting = (cs.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") in (
            "ErrImagePull",
            "ImagePullBackOff",
            "InvalidImageName",
            "CreateContainerConfigError",
        ):
            return True, False, waiting["reason"]
    if phase == "Succeeded":
        return True, True, reason
    if phase == "Failed":
        return True, False, reason or "Failed"
    return False, False, reason
