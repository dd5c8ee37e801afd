"""RegistryClient against a real registry (Debian's docker-registry) on loopback."""

import json

import pytest

from binder_spawner.images import image_name
from binder_spawner.registry import RegistryClient, RegistryError, credentials_for, parse_challenge
from tests.registry import DOCKER_MANIFEST, FaultyFront

from .utils import free_port

COMMIT = "1479e0252b2e648bb755ee913292b79495931717"


def client_for(reg, **kwargs):
    return RegistryClient(insecure_registries=[reg.host], retry_delay=0.01, **kwargs)


async def test_anonymous_oci_and_docker_manifests(registry):
    client = client_for(registry)
    image = image_name("gh/binder-examples/octave", COMMIT, prefix=f"{registry.host}/binder-")
    name, tag = image.split("/", 1)[1].rsplit(":", 1)
    assert not await client.image_exists(image)
    registry.push_image(name, tag)
    assert await client.image_exists(image)  # a miss was not cached
    registry.push_image("binder/docker-format", "v1", media_type=DOCKER_MANIFEST)
    assert await client.image_exists(f"{registry.host}/binder/docker-format:v1")
    assert not await client.image_exists(f"{registry.host}/binder/docker-format:v2")


async def test_positive_cache_expires(registry):
    client = client_for(registry)
    now = [100.0]
    client.clock = lambda: now[0]
    registry.push_image("binder/cached", "t")
    image = f"{registry.host}/binder/cached:t"
    assert await client.image_exists(image)
    sent = client.requests
    registry.delete_image("binder/cached", "t")
    assert await client.image_exists(image)  # served from the cache
    assert client.requests == sent
    now[0] += client.cache_ttl + 1
    assert not await client.image_exists(image)


async def test_basic_auth_from_docker_config(registry_auth, tmp_path):
    registry_auth.push_image("private/img", "t")
    image = f"{registry_auth.host}/private/img:t"
    with pytest.raises(RegistryError, match="refused access"):
        await client_for(registry_auth).image_exists(image)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(registry_auth.docker_config()))
    client = client_for(registry_auth, docker_config_path=str(config))
    assert await client.image_exists(image)
    assert not await client.image_exists(f"{registry_auth.host}/private/img:other")
    wrong = {"auths": {registry_auth.host: {"username": "builder", "password": "wrong"}}}
    with pytest.raises(RegistryError, match="refused access"):
        await client_for(registry_auth, docker_config=wrong).image_exists(image)


async def test_bearer_token_flow(registry_token):
    registry_token.push_image("private/img", "t")
    image = f"{registry_token.host}/private/img:t"
    tokens = registry_token.token_server
    with pytest.raises(RegistryError, match="refused access"):
        # anonymous token: the registry grants nothing
        await client_for(registry_token).image_exists(image)
    client = client_for(registry_token, docker_config=registry_token.docker_config(), cache_ttl=0)
    before = tokens.token_requests
    assert await client.image_exists(image)
    assert await client.image_exists(image)
    assert not await client.image_exists(f"{registry_token.host}/private/img:nope")
    assert tokens.token_requests == before + 1  # the token is reused until it expires


async def test_unreachable_registry_bounded_retries():
    host = f"127.0.0.1:{free_port()}"
    client = RegistryClient(insecure_registries=[host], retries=2, retry_delay=0.01)
    with pytest.raises(RegistryError, match="failed"):
        await client.image_exists(f"{host}/binder/x:t")
    assert client.requests == 3


@pytest.mark.parametrize(
    "header, expected",
    [
        pytest.param('Basic realm="r"', ("basic", {"realm": "r"}), id="basic"),
        pytest.param(
            'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull"',
            (
                "bearer",
                {
                    "realm": "https://auth.docker.io/token",
                    "service": "registry.docker.io",
                    "scope": "repository:library/ubuntu:pull",
                },
            ),
            id="bearer",
        ),
        pytest.param(None, ("", {}), id="missing"),
    ],
)
def test_parse_challenge(header, expected):
    assert parse_challenge(header) == expected


def test_credentials_for_docker_config_keys():
    config = {
        "auths": {
            "https://index.docker.io/v1/": {"auth": "dTpw"},  # u:p
            "ghcr.io": {"username": "me", "password": "tok"},
            "bad.example": {"auth": "!!!"},
        }
    }
    assert credentials_for(config, "registry-1.docker.io") == ("u", "p")
    assert credentials_for(config, "ghcr.io") == ("me", "tok")
    assert credentials_for(config, "bad.example") is None
    assert credentials_for(config, "quay.io") is None
    assert credentials_for({}, "ghcr.io") is None


def test_docker_hub_names():
    client = RegistryClient()
    assert client._endpoint("jupyter/base-notebook:latest")[1:] == (
        "https://registry-1.docker.io",
        "jupyter/base-notebook",
        "latest",
    )
    assert client._endpoint("ubuntu")[2:] == ("library/ubuntu", "latest")
    assert client._endpoint("quay.io/org/img@sha256:abc")[2:] == ("org/img", "sha256:abc")


async def test_server_errors_are_retried(registry):
    registry.push_image("binder/flaky", "t")
    front = FaultyFront(registry.url, [503, 429]).start()
    try:
        client = RegistryClient(insecure_registries=[front.host], retries=2, retry_delay=0.01)
        assert await client.image_exists(f"{front.host}/binder/flaky:t")
        assert front.requests == 3
        front.failures = [502, 502, 502]
        with pytest.raises(RegistryError, match="HTTP 502"):
            await client.image_exists(f"{front.host}/binder/flaky:other")
        assert front.requests == 6  # bounded: three attempts
    finally:
        front.stop()


async def test_expired_token_is_renewed(registry_token):
    registry_token.push_image("private/img", "t")
    client = client_for(registry_token, docker_config=registry_token.docker_config(), cache_ttl=0)
    now = [0.0]
    client.clock = lambda: now[0]
    tokens = registry_token.token_server
    image = f"{registry_token.host}/private/img:t"
    assert await client.image_exists(image)
    issued = tokens.token_requests
    now[0] += 299  # tokens live 300 s; the client renews 10 s early
    assert await client.image_exists(image)
    assert tokens.token_requests == issued + 1


async def test_retries_mean_the_same_for_the_registry_and_the_hub_api():
    """``retries=1``: one attempt and one retry, for RegistryClient as for HubAPI."""
    from binder_service.hubapi import HubAPI, HubAPIError

    front = FaultyFront("http://127.0.0.1:9", [503] * 10).start()
    try:
        client = RegistryClient(insecure_registries=[front.host], retries=1, retry_delay=0.01)
        with pytest.raises(RegistryError, match="HTTP 503"):
            await client.image_exists(f"{front.host}/binder/x:t")
        assert front.requests == 2
        hub = HubAPI(api_url=f"http://{front.host}/hub/api", api_token="t", retries=1)
        with pytest.raises(HubAPIError) as raised:
            await hub.info()
        assert raised.value.status == 503
        assert front.requests == 4
        assert RegistryClient().retries == 2  # three attempts, as before the rename of meaning
    finally:
        front.stop()
