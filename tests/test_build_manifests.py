"""Build pods and user pod settings of BinderSpawner, as pure data (no cluster)."""

import asyncio
import json
import logging

import jupyterhub
import kubernetes_validate
import pytest
from kubernetes_asyncio.config import kube_config
from repo2docker.__main__ import get_argparser

from binder_spawner import build
from binder_spawner.images import repo_hash
from binder_spawner.spawner import BinderSpawner

from .k8s.fixtures import reset_kubespawner_config

COMMIT = "0123456789abcdef0123456789abcdef01234567"
IMAGE = "registry.example.org/binder-gh-org-repo-1a2b3c:" + COMMIT
REPO = "https://github.com/org/repo"


@pytest.fixture(autouse=True)
def kubeconfig(tmp_path, monkeypatch):
    """KubeSpawner loads a kubeconfig when constructed: give it one (never contacted)."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
                "users": [{"name": "u", "user": {"token": "x"}}],
                "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "c",
            }
        )
    )
    monkeypatch.setenv("KUBECONFIG", str(path))
    # read once at import by kubernetes_asyncio
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(path))
    reset_kubespawner_config()
    yield
    reset_kubespawner_config()


def validate(obj):
    # strict: an unknown or misspelt field fails, as the emulator's API server does
    kubernetes_validate.validate(obj, "1.30", strict=True)


def manifest(**overrides):
    kwargs = dict(
        name="build-binder-gh-org-repo-abc123-012345",
        builder_image="quay.io/jupyterhub/repo2docker:2025.08.0",
        command=build.repo2docker_command(REPO, COMMIT, IMAGE),
        repo_key="gh/org/repo",
        repo_url=REPO,
        commit=COMMIT,
        image=IMAGE,
    )
    kwargs.update(overrides)
    return build.build_pod_manifest(**kwargs)


def test_repo2docker_command_is_accepted_by_repo2docker():
    appendix = build.singleuser_appendix("5.5.0")
    command = build.repo2docker_command(REPO, COMMIT, IMAGE, appendix=appendix)
    assert command[0] == "jupyter-repo2docker"
    assert command[-1] == REPO
    args = get_argparser().parse_args(command[1:])
    assert args.repo == REPO
    assert args.ref == COMMIT
    assert args.image_name == IMAGE
    assert args.clean is False
    assert args.run is False
    assert args.json_logs is True
    assert args.user_name == "jovyan"
    assert args.user_id == 1000
    assert args.push is True
    assert args.appendix == appendix
    assert args.cmd == []


def test_repo2docker_extra_args_go_before_the_repository():
    command = build.repo2docker_command(
        REPO, COMMIT, IMAGE, extra_args=["--build-memory-limit", "3G"]
    )
    args = get_argparser().parse_args(command[1:])
    assert args.build_memory_limit == "3G"
    assert args.repo == REPO and args.cmd == []


@pytest.mark.parametrize(
    "version, requirement",
    [
        pytest.param("5.5.0", "jupyterhub==5.5.0", id="release"),
        pytest.param("6.1.1", "jupyterhub==6.1.1", id="latest"),
        pytest.param("6.2.0.dev0", "jupyterhub>=6.2.0b0,<6.3", id="dev"),
        pytest.param("6.0.0b1", "jupyterhub>=6.0.0b0,<6.1", id="beta"),
    ],
)
def test_singleuser_requirement_matches_the_hub(version, requirement):
    assert build.singleuser_requirement(version) == requirement
    assert f'"{requirement}"' in build.singleuser_appendix(version)


async def test_spawner_appends_singleuser_of_this_hub_unless_turned_off():
    spawner = BinderSpawner(_mock=True)

    class Spec:
        repo_url = REPO
        commit = COMMIT

    command = spawner.build_command(Spec, IMAGE)
    appendix = get_argparser().parse_args(command[1:]).appendix
    assert f"jupyterhub=={jupyterhub.__version__}" in appendix
    assert appendix.startswith("# jupyterhub-singleuser")
    assert "RUN ${NB_PYTHON_PREFIX}/bin/python -m pip install" in appendix

    spawner.install_singleuser = False
    spawner.build_appendix = "ENV FOO=bar"
    args = get_argparser().parse_args(spawner.build_command(Spec, IMAGE)[1:])
    assert args.appendix == "ENV FOO=bar\n"

    spawner.build_appendix = ""
    args = get_argparser().parse_args(spawner.build_command(Spec, IMAGE)[1:])
    assert args.appendix is None


def test_docker_socket_build_pod():
    pod = manifest(
        resources={"requests": {"cpu": "200m", "memory": "1Gi"}, "limits": {"memory": "4Gi"}},
        node_selector={"binder/build": "true"},
        tolerations=[{"key": "build", "operator": "Exists", "effect": "NoSchedule"}],
        preferred_node="node-2",
    )
    validate(pod)
    spec = pod["spec"]
    (container,) = spec["containers"]
    assert container["args"] == build.repo2docker_command(REPO, COMMIT, IMAGE)
    assert container["image"] == "quay.io/jupyterhub/repo2docker:2025.08.0"
    assert spec["volumes"] == [
        {"name": "docker-socket", "hostPath": {"path": "/var/run/docker.sock", "type": "Socket"}}
    ]
    assert container["volumeMounts"] == [
        {"name": "docker-socket", "mountPath": "/var/run/docker.sock"}
    ]
    assert "DOCKER_HOST" not in {e["name"] for e in container["env"]}
    assert container["resources"]["limits"] == {"memory": "4Gi"}
    assert spec["restartPolicy"] == "Never"
    assert spec["automountServiceAccountToken"] is False
    assert spec["nodeSelector"] == {"binder/build": "true"}
    assert spec["tolerations"] == [{"key": "build", "operator": "Exists", "effect": "NoSchedule"}]
    (term,) = spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert term["weight"] == 100
    assert term["preference"]["matchExpressions"] == [
        {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-2"]}
    ]
    labels = pod["metadata"]["labels"]
    assert labels[build.REPO_HASH_LABEL] == repo_hash("gh/org/repo")
    assert REPO not in json.dumps(labels)
    assert labels[build.COMMIT_LABEL] == COMMIT
    assert labels[build.COMPONENT_LABEL] == build.BUILD_COMPONENT
    assert pod["metadata"]["annotations"][build.IMAGE_ANNOTATION] == IMAGE


def test_remote_build_pod_with_push_secret():
    pod = manifest(
        backend=build.REMOTE,
        docker_host="tcp://dind.binder.svc:2375",
        push_secret="binder-push",
        extra_env={"BUILDKIT_PROGRESS": "plain"},
    )
    validate(pod)
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["DOCKER_HOST"] == "tcp://dind.binder.svc:2375"
    assert env["DOCKER_CONFIG"] == "/root/.docker"
    assert env["BUILDKIT_PROGRESS"] == "plain"
    assert pod["spec"]["volumes"] == [
        {
            "name": "docker-config",
            "secret": {
                "secretName": "binder-push",
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}],
            },
        }
    ]
    assert container["volumeMounts"] == [
        {"name": "docker-config", "mountPath": "/root/.docker", "readOnly": True}
    ]
    assert "affinity" not in pod["spec"]


def test_bad_backend_settings_are_refused():
    with pytest.raises(ValueError, match="docker_host"):
        manifest(backend=build.REMOTE)
    with pytest.raises(ValueError, match="unknown build backend"):
        manifest(backend="podman")


def test_build_node_is_sticky_per_repository():
    nodes = [f"node-{i}" for i in range(8)]
    first = build.build_node(nodes, "gh/org/repo")
    assert first in nodes
    # stable whatever the order nodes are listed in
    assert build.build_node(list(reversed(nodes)), "gh/org/repo") == first
    # removing another node does not move the repository
    others = [n for n in nodes if n != first]
    assert build.build_node([first] + others[1:], "gh/org/repo") == first
    # repositories spread over the nodes
    chosen = {build.build_node(nodes, f"gh/org/repo{i}") for i in range(40)}
    assert len(chosen) >= 4
    assert build.build_node([], "gh/org/repo") is None


@pytest.mark.parametrize(
    "line, expected",
    [
        pytest.param(
            b'{"message": "Step 1/3 : FROM x\\n", "phase": "building"}\n',
            ("building", "Step 1/3 : FROM x"),
            id="json",
        ),
        pytest.param(
            '{"message": "Pushing image\\n", "phase": "pushing"}',
            ("pushing", "Pushing image"),
            id="pushing",
        ),
        pytest.param('{"message": "boom\\n", "phase": "failed"}', ("failed", "boom"), id="failed"),
        pytest.param('{"message": "x", "phase": "unknown"}', ("building", "x"), id="unknown-phase"),
        pytest.param("plain text\n", ("building", "plain text"), id="plain"),
        pytest.param("{not json", ("building", "{not json"), id="broken-json"),
    ],
)
def test_parse_log_line(line, expected):
    assert build.parse_log_line(line) == expected


def test_pod_outcome():
    assert build.pod_outcome({"status": {"phase": "Pending"}}) == (False, False, "")
    assert build.pod_outcome({"status": {"phase": "Succeeded"}})[:2] == (True, True)
    failed = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [{"state": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
        }
    }
    assert build.pod_outcome(failed) == (True, False, "Error (exit code 1)")
    pull = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}],
        }
    }
    assert build.pod_outcome(pull) == (True, False, "ImagePullBackOff")


async def test_user_pod_defaults():
    spawner = BinderSpawner(_mock=True)
    assert spawner.mem_guarantee == 1024**3
    assert spawner.mem_limit == 2 * 1024**3
    assert spawner.automount_service_account_token is False
    assert spawner.uid == 1000
    csc = spawner.container_security_context
    assert csc["runAsNonRoot"] is True
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"] == {"drop": ["ALL"]}
    assert csc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spawner.build_timeout == 3600
    assert spawner.builder_image.startswith("quay.io/jupyterhub/repo2docker:")


async def test_kubespawner_config_applies_and_binderspawner_config_wins():
    from traitlets.config import Config

    config = Config()
    config.KubeSpawner.mem_limit = "3G"
    config.KubeSpawner.mem_guarantee = "512M"
    config.BinderSpawner.mem_guarantee = "768M"
    spawner = BinderSpawner(_mock=True, config=config)
    assert spawner.mem_limit == 3 * 1024**3
    assert spawner.mem_guarantee == 768 * 1024**2


async def test_bad_build_backend_config():
    from traitlets import TraitError

    spawner = BinderSpawner(_mock=True)
    with pytest.raises(TraitError, match="build_backend"):
        spawner.build_backend = "podman"


async def test_placement_without_answer_in_time_launches_without_preferences(caplog):
    from binder_spawner.service_client import BinderServiceClient

    # a service that accepts the connection and never answers
    async def silent(reader, writer):
        await reader.read()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        client = BinderServiceClient(url=f"http://127.0.0.1:{port}/services/binder/")
        spawner = BinderSpawner(_mock=True, service_client=client, placement_timeout=0.2)
        with caplog.at_level(logging.WARNING):
            assert await spawner.placement_terms(IMAGE) == []
        assert "launching without node preferences" in caplog.text
    finally:
        server.close()


async def test_placement_answer_becomes_preferred_node_affinity():
    from kubernetes_asyncio.client import V1Container, V1Pod, V1PodSpec

    pod = V1Pod(spec=V1PodSpec(containers=[V1Container(name="notebook")]))
    terms = [
        {
            "weight": 100,
            "preference": {
                "matchExpressions": [
                    {"key": "kubernetes.io/hostname", "operator": "In", "values": ["node-2"]}
                ]
            },
        }
    ]
    BinderSpawner._add_preferred_terms(pod, terms)
    BinderSpawner._add_preferred_terms(pod, terms[:1])
    preferred = pod.spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution
    assert preferred == terms + terms


async def test_spawners_of_a_class_share_collaborators():
    from binder_spawner.resolver import shared_resolve_cache

    one, two = BinderSpawner(_mock=True), BinderSpawner(_mock=True)
    assert one.registry_client is two.registry_client
    assert one.repo_policy is two.repo_policy
    assert one.repo_policy.resolve_cache is shared_resolve_cache()

    class OtherSpawner(BinderSpawner):
        pass

    other = OtherSpawner(_mock=True)
    assert other.registry_client is not one.registry_client
    assert other.repo_policy is not one.repo_policy
    # the resolve cache is keyed by the settings it depends on: one for all
    assert other.repo_policy.resolve_cache is one.repo_policy.resolve_cache


@pytest.mark.parametrize(
    "doi, version, slug",
    [
        pytest.param("10.5281/zenodo.3242073", "3242074", "zenodo-3242074", id="zenodo"),
        pytest.param(
            "10.6084/m9.figshare.9782777", "9782777.v2", "figshare-9782777.v2", id="figshare"
        ),
    ],
)
def test_archive_record_build_pod_is_valid_and_hands_repo2docker_the_doi(doi, version, slug):
    """BinderHub (build.py b9fad99 L175-188): ``--ref=<resolved ref>``, the DOI last."""
    from binder_spawner.images import build_pod_name, image_name
    from binder_spawner.repos import RepoPolicy

    spec = RepoPolicy().parse(doi)
    spec = spec.__class__(**{**spec.__dict__, "commit": version, "build_slug": slug})
    image = image_name(spec, spec.commit, prefix="registry.example.org/binder-")
    command = build.repo2docker_command(spec.repo_url, spec.commit, image)
    pod = manifest(
        name=build_pod_name(image),
        command=command,
        repo_key=spec.repo_key,
        repo_url=spec.repo_url,
        commit=spec.commit,
        image=image,
    )
    validate(pod)
    assert pod["metadata"]["labels"][build.COMMIT_LABEL] == version
    args = get_argparser().parse_args(pod["spec"]["containers"][0]["args"][1:])
    assert (args.repo, args.ref, args.image_name) == (doi, version, image)
