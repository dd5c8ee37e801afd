"""chart-values/: valid for the z2jh 4.4.0 chart, for the classes they configure, and for Kubernetes."""

import asyncio
import copy
import re
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from traitlets.config import Configurable

from binder_service.permissions import service_scopes

from .utils import REPO_ROOT

CHART_VALUES = REPO_ROOT / "chart-values"
Z2JH = Path(__file__).parent / "data" / "z2jh-4.4.0"
VALUES_FILES = sorted(CHART_VALUES.glob("[0-9][0-9]-*.yaml"))
MANIFESTS = [CHART_VALUES / "rbac.yaml"]
KUBERNETES_VERSION = "1.33.0"


def deep_merge(base, override):
    """Merge as helm merges values files: maps recursively, everything else replaced."""
    result = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = deep_merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def load_yaml(path):
    return yaml.safe_load(Path(path).read_text()) or {}


def merged_values(overrides=None):
    values = load_yaml(Z2JH / "values.yaml")
    for path in VALUES_FILES:
        values = deep_merge(values, load_yaml(path))
    if overrides:
        values = deep_merge(values, overrides)
    return values


SCHEMA = load_yaml(Z2JH / "values.schema.yaml")


def validate_values(values):
    jsonschema.validate(values, SCHEMA, cls=jsonschema.Draft7Validator)


def test_values_files_exist():
    names = [p.name for p in VALUES_FILES]
    assert names == ["01-binder.yaml", "02-builds.yaml", "03-security.yaml"]


def test_merged_values_match_the_chart_schema():
    validate_values(merged_values())


@pytest.mark.parametrize(
    "typo",
    [
        pytest.param({"hub": {"allowNamedServer": True}}, id="misspelled-hub-key"),
        pytest.param({"singleuser": {"memory": {"guarantees": "1G"}}}, id="misspelled-memory"),
        pytest.param({"cull": {"enabled": "no"}}, id="wrong-type"),
        pytest.param({"singleuser": {"storage": {"type": "nothing"}}}, id="bad-enum"),
    ],
)
def test_a_typo_fails_validation(typo):
    with pytest.raises(jsonschema.ValidationError):
        validate_values(merged_values(typo))


def test_each_values_file_alone_matches_the_schema():
    # each file can be applied on its own over the chart's defaults
    for path in VALUES_FILES:
        validate_values(deep_merge(load_yaml(Z2JH / "values.yaml"), load_yaml(path)))


def test_binder_defaults():
    values = merged_values()
    assert values["hub"]["config"]["JupyterHub"]["spawner_class"] == "binder"
    assert values["hub"]["config"]["JupyterHub"]["authenticator_class"] == "binder-anonymous"
    assert values["cull"]["enabled"] is False
    assert values["singleuser"]["memory"] == {"guarantee": "1G", "limit": "2G"}
    assert values["singleuser"]["storage"]["type"] == "none"
    assert values["prePuller"]["hook"]["enabled"] is False
    assert values["prePuller"]["continuous"]["enabled"] is False
    assert values["hub"]["consecutiveFailureLimit"] == 0
    egress = values["singleuser"]["networkPolicy"]
    assert egress["egressAllowRules"]["nonPrivateIPs"] is False
    assert egress["egressAllowRules"]["privateIPs"] is False
    assert egress["egressAllowRules"]["cloudMetadataServer"] is False
    for rule in egress["egress"]:
        for peer in rule["to"]:
            assert "169.254.0.0/16" in peer["ipBlock"]["except"]
            assert "10.0.0.0/8" in peer["ipBlock"]["except"]


def configurable_classes():
    """Every class a hub.config section can name, by class name."""
    from jupyterhub.app import JupyterHub
    from kubespawner import KubeSpawner

    from binder_spawner.auth import AnonymousAuthenticator
    from binder_spawner.registry import RegistryClient
    from binder_spawner.repos import RepoPolicy
    from binder_spawner.service_client import BinderServiceClient
    from binder_spawner.spawner import BinderSpawner

    classes = {}
    for cls in [
        JupyterHub,
        KubeSpawner,
        BinderSpawner,
        AnonymousAuthenticator,
        RegistryClient,
        RepoPolicy,
        BinderServiceClient,
    ]:
        for klass in cls.mro():
            if isinstance(klass, type) and issubclass(klass, Configurable):
                classes.setdefault(klass.__name__, klass)
    for cls in JupyterHub().classes:
        classes.setdefault(cls.__name__, cls)
    return classes


def unknown_options(config):
    classes = configurable_classes()
    problems = []
    for section, options in config.items():
        cls = classes.get(section)
        if cls is None:
            problems.append(f"unknown class {section}")
            continue
        known = set(cls.class_trait_names(config=True))
        for name in options:
            if name not in known:
                problems.append(f"{section}.{name}")
    return problems


def test_hub_config_sections_are_recognised():
    config = merged_values()["hub"]["config"]
    assert {"JupyterHub", "BinderSpawner"} <= set(config)
    assert unknown_options(config) == []


def test_an_unknown_hub_config_option_is_caught():
    config = merged_values({"hub": {"config": {"BinderSpawner": {"image_prefx": "x"}}}})
    assert unknown_options(config["hub"]["config"]) == ["BinderSpawner.image_prefx"]
    assert unknown_options({"BinderSpawer": {}}) == ["unknown class BinderSpawer"]


def test_hub_config_values_are_accepted_by_the_traits(tmp_path, monkeypatch):
    # load the sections into the classes: wrong types raise TraitError
    import json

    from traitlets.config import Config

    from binder_spawner.spawner import BinderSpawner

    from .k8s.fixtures import reset_kubespawner_config

    # KubeSpawner loads a kubeconfig when it is made; nothing is contacted
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    (tmp_path / "kubeconfig").write_text(json.dumps(kubeconfig))
    # (kubernetes_asyncio reads KUBECONFIG once, when it is imported)
    monkeypatch.setattr(
        "kubernetes_asyncio.config.kube_config.KUBE_CONFIG_DEFAULT_LOCATION",
        str(tmp_path / "kubeconfig"),
    )
    reset_kubespawner_config()
    config = Config(merged_values()["hub"]["config"])

    # KubeSpawner's own _mock flag (7.0 and 7.1) gives it a stand-in user and hub
    async def make():
        # KubeSpawner makes its API client for the running loop
        return BinderSpawner(config=config, _mock=True)

    spawner = asyncio.run(make())
    for name, value in config["BinderSpawner"].items():
        assert getattr(spawner, name) == value
    reset_kubespawner_config()


def test_helper_classes_accept_their_sections():
    from traitlets.config import Config

    from binder_spawner.registry import RegistryClient
    from binder_spawner.repos import RepoPolicy
    from binder_spawner.service_client import BinderServiceClient

    config = Config(merged_values()["hub"]["config"])
    assert {"RegistryClient", "RepoPolicy", "BinderServiceClient"} <= set(config)
    for cls in (RegistryClient, RepoPolicy, BinderServiceClient):
        instance = cls(config=config)
        for name, value in config[cls.__name__].items():
            got = getattr(instance, name)
            assert (set(got) if isinstance(got, set) else got) == (
                set(value) if isinstance(got, set) else value
            ), (cls.__name__, name)


def test_the_spawner_reaches_the_service_where_it_listens():
    values = merged_values()
    command = values["hub"]["services"]["binder"]["command"]
    port = next(int(a.split("=", 1)[1]) for a in command if a.startswith("--port="))
    client_url = values["hub"]["config"]["BinderServiceClient"]["url"]
    assert client_url == f"http://127.0.0.1:{port}/services/binder/"
    assert values["hub"]["services"]["binder"]["url"].endswith(f":{port}")
    assert {"port": port, "targetPort": port, "name": "binder"} in values["hub"]["service"][
        "extraPorts"
    ]


def unknown_service_arguments(arguments):
    """Arguments ``python -m binder_service`` has no alias or flag for (traitlets only warns)."""
    from binder_service.app import BinderService

    known = set(BinderService.aliases) | set(BinderService.flags)
    return [a for a in arguments if a[2:].split("=", 1)[0] not in known or a[:2] != "--"]


def test_service_command_is_accepted_by_binder_service():
    from binder_service.app import BinderService

    command = merged_values()["hub"]["services"]["binder"]["command"]
    assert command[:3] == ["python3", "-m", "binder_service"]
    assert unknown_service_arguments(command[3:]) == []
    app = BinderService()
    app.parse_command_line(command[3:])
    assert app.ip == "0.0.0.0"
    assert app.port == 10101
    assert app.config.PlacementSource.enabled is True
    assert not app.extra_args


def test_a_wrong_service_flag_is_caught():
    assert unknown_service_arguments(["--port=1", "--prot=10101", "kubernetes"]) == [
        "--prot=10101",
        "kubernetes",
    ]


def test_extra_config_gives_the_service_the_cluster_address(monkeypatch):
    from traitlets.config import Config

    values = merged_values()
    c = Config()
    # as the chart's jupyterhub_config.py does: hub.services into c.JupyterHub.services
    c.JupyterHub.services = [
        dict(service, name=name) for name, service in values["hub"]["services"].items()
    ]
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.setenv("POD_NAMESPACE", "jhub")
    for source in values["hub"]["extraConfig"].values():
        exec(compile(source, "extraConfig", "exec"), {"c": c})
    (binder,) = [s for s in c.JupyterHub.services if s["name"] == "binder"]
    # and the hub's shared settings (see test_chart_service_* below)
    assert callable(binder["environment"].pop("BINDER_SERVICE_CONFIG"))
    assert binder["environment"] == {
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
        "POD_NAMESPACE": "jhub",
    }


def test_push_secret_is_mounted_where_lookups_read_it():
    values = merged_values()
    path = values["hub"]["config"]["RegistryClient"]["docker_config_path"]
    secret = values["hub"]["config"]["BinderSpawner"]["push_secret"]
    (volume,) = [v for v in values["hub"]["extraVolumes"] if v.get("secret")]
    assert volume["secret"]["secretName"] == secret
    (item,) = volume["secret"]["items"]
    assert item["key"] == ".dockerconfigjson"
    (mount,) = [m for m in values["hub"]["extraVolumeMounts"] if m["name"] == volume["name"]]
    assert mount["mountPath"] + "/" + item["path"] == path
    assert mount["readOnly"] is True
    assert values["singleuser"]["image"]["pullSecrets"] == [secret]


def _documented_scopes(path):
    """The ``"scopes": [...]`` list of the role example in a docs page."""
    text = (REPO_ROOT / "docs" / path).read_text()
    block = re.search(r'"name": "binder-service",\s*"scopes": \[(.*?)\]', text, re.S)
    assert block, f"no binder-service role example in docs/{path}"
    return re.findall(r'"([^"]+)"', block.group(1))


def test_service_role_is_the_same_everywhere():
    # binder_service.permissions is the source: jupyterhub_config.py and the
    # tests' hubs use it; the chart values and the docs are checked against it
    scopes = service_scopes()
    assert merged_values()["hub"]["loadRoles"]["binder-service"]["scopes"] == scopes
    assert _documented_scopes("permissions.md") == scopes
    assert _documented_scopes("service.md") == scopes
    page = (REPO_ROOT / "docs" / "permissions.md").read_text()
    for scope in scopes:
        assert f"| `{scope}` |" in page, scope


def test_service_role_scopes_exist():
    from jupyterhub.scopes import scope_definitions

    roles = merged_values()["hub"]["loadRoles"]
    for role in roles.values():
        for scope in role["scopes"]:
            assert scope.split("!")[0] in scope_definitions, scope
    assert roles["binder-service"]["services"] == ["binder"]
    assert "binder" in merged_values()["hub"]["services"]


@pytest.mark.parametrize("path", [pytest.param(p, id=p.name) for p in MANIFESTS])
def test_manifests_are_valid_kubernetes(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_an_invalid_manifest_is_caught():
    doc = next(yaml.safe_load_all((CHART_VALUES / "rbac.yaml").read_text()))
    doc["rules"][0]["verb"] = ["get"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_hub_image_keeps_base_user_and_command():
    dockerfile = (CHART_VALUES / "hub-image" / "Dockerfile").read_text()
    lines = [line.strip() for line in dockerfile.splitlines() if line.strip()]
    instructions = [line for line in lines if not line.startswith("#")]
    assert instructions[0] == "FROM quay.io/jupyterhub/k8s-hub:4.4.0"
    assert instructions[-1] == "USER jovyan"
    assert not any(line.startswith(("CMD", "ENTRYPOINT")) for line in instructions)
    # installed against the base image's pins, which exist in the repository
    assert "-c /tmp/jupyterhub-binder/requirements/z2jh-4.4.0.txt" in dockerfile
    assert (REPO_ROOT / "requirements" / "z2jh-4.4.0.txt").exists()


def test_the_hub_waits_as_long_as_a_build_may_take():
    values = merged_values()
    spawner = values["hub"]["config"]["BinderSpawner"]
    assert values["singleuser"]["startTimeout"] >= spawner["build_timeout"] + 60
    assert spawner["http_timeout"] >= 120


def chart_hub(values, monkeypatch):
    """The hub's configuration as the chart's jupyterhub_config.py builds it from
    ``values``: hub.config, singleuser.memory, hub.services, then hub.extraConfig."""
    from traitlets.config import Config

    c = Config()
    for section, settings in values["hub"]["config"].items():
        c[section].update(settings)
    # z2jh's jupyterhub_config.py: singleuser.memory.guarantee -> KubeSpawner.mem_guarantee
    c.KubeSpawner.mem_guarantee = values["singleuser"]["memory"]["guarantee"]
    c.JupyterHub.services = [
        dict(service, name=name) for name, service in values["hub"]["services"].items()
    ]
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    for source in values["hub"]["extraConfig"].values():
        exec(compile(source, "extraConfig", "exec"), {"c": c})
    return c


def chart_service(values, monkeypatch):
    """binder_service as the chart's hub starts it: its command line, and the
    environment the hub computes for it when it starts it."""
    from jupyterhub.app import JupyterHub

    from binder_service.app import BinderService

    c = chart_hub(values, monkeypatch)
    (binder,) = [s for s in c.JupyterHub.services if s["name"] == "binder"]
    JupyterHub.clear_instance()
    hub = JupyterHub.instance(config=c)
    try:
        environment = {
            key: value(None) if callable(value) else value
            for key, value in binder["environment"].items()
        }
    finally:
        JupyterHub.clear_instance()
    for key, value in environment.items():
        monkeypatch.setenv(key, value)
    service = BinderService()
    service.initialize(binder["command"][3:])
    return hub, service


SHARED_OVERRIDES = {
    "hub": {
        "config": {
            "BinderSpawner": {"idle_timeout": 1234, "max_age": 4321},
            "AnonymousAuthenticator": {"group": "binder-guests"},
            "RepoPolicy": {"allowed_providers": ["gh"]},
        }
    },
    "singleuser": {"memory": {"guarantee": "3G"}},
}


def test_chart_service_gets_the_hubs_repo_policy(monkeypatch):
    _, service = chart_service(merged_values(SHARED_OVERRIDES), monkeypatch)
    assert service.policy.allowed_providers == {"gh"}
    _, service = chart_service(merged_values(), monkeypatch)
    assert service.policy.allowed_providers == {"gh", "gl", "git", "gist"}


def test_chart_service_culls_after_the_spawners_idle_timeout(monkeypatch):
    hub, service = chart_service(merged_values(SHARED_OVERRIDES), monkeypatch)
    assert hub.spawner_class.__name__ == "BinderSpawner"
    assert service.culler.timeout == 1234
    _, service = chart_service(merged_values(), monkeypatch)
    assert service.culler.timeout == 600


def test_chart_service_culls_at_the_spawners_max_age(monkeypatch):
    _, service = chart_service(merged_values(SHARED_OVERRIDES), monkeypatch)
    assert service.culler.max_age == 4321


def test_chart_service_knows_anonymous_users_by_the_authenticators_group(monkeypatch):
    hub, service = chart_service(merged_values(SHARED_OVERRIDES), monkeypatch)
    assert hub.authenticator_class.__name__ == "AnonymousAuthenticator"
    assert service.culler.anonymous_group == "binder-guests"


def test_chart_service_places_pods_of_singleuser_memory_guarantee(monkeypatch):
    _, service = chart_service(merged_values(SHARED_OVERRIDES), monkeypatch)
    assert service.placement_source.pod_memory == 3 * 2**30
    # the chart's own 1G: the same as the placement model's default
    _, service = chart_service(merged_values(), monkeypatch)
    assert service.placement_source.pod_memory == 2**30
