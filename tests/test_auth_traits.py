"""AnonymousAuthenticator settings: defaults, validation, entry point (no hub needed)."""

import pytest
from jupyterhub import orm
from jupyterhub.auth import Authenticator
from traitlets import TraitError
from traitlets.config import Config

from binder_spawner.auth import AnonymousAuthenticator


def test_defaults_that_make_it_work_without_settings():
    auth = AnonymousAuthenticator()
    # the base class has both False (allow_all since JupyterHub 5)
    assert Authenticator().auto_login is False
    assert Authenticator().allow_all is False
    assert auth.auto_login is True
    assert auth.allow_all is True
    assert auth.group == "binder-anonymous"
    assert auth.login_url("/base/hub/") == "/base/hub/anonymous-login"
    # only configurable-http-proxy on this machine, one hop: no private networks
    assert auth.trusted_proxy_networks == ["127.0.0.0/8", "::1/128"]
    assert auth.trusted_proxy_hops == 1


def test_explicit_config_wins():
    config = Config()
    config.AnonymousAuthenticator.auto_login = False
    config.AnonymousAuthenticator.allow_all = False
    config.AnonymousAuthenticator.trusted_proxy_networks = ["10.100.0.0/16", "2001:db8::1"]
    auth = AnonymousAuthenticator(config=config)
    assert auth.auto_login is False
    assert auth.allow_all is False
    assert auth.trusted_proxy_networks == ["10.100.0.0/16", "2001:db8::1"]


@pytest.mark.parametrize(
    "trait, value",
    [
        pytest.param("username_prefix", "Anon-", id="prefix-uppercase"),
        pytest.param("username_prefix", "-anon", id="prefix-hyphen-first"),
        pytest.param("username_prefix", "an on", id="prefix-space"),
        pytest.param("trusted_proxy_networks", ["10.0.0.0/33"], id="bad-network"),
        pytest.param("trusted_proxy_networks", ["proxy.example"], id="hostname"),
        pytest.param("ipv6_prefix_length", 0, id="prefix-zero"),
        pytest.param("ipv6_prefix_length", 129, id="prefix-too-long"),
        pytest.param("new_users_window", 0, id="window-zero"),
        pytest.param("trusted_proxy_hops", -1, id="hops-negative"),
    ],
)
def test_bad_values_are_refused(trait, value):
    with pytest.raises(TraitError, match=f"AnonymousAuthenticator.{trait}"):
        AnonymousAuthenticator(**{trait: value})


def test_entry_point():
    from importlib.metadata import entry_points

    (ep,) = entry_points(group="jupyterhub.authenticators", name="binder-anonymous")
    assert ep.load() is AnonymousAuthenticator


def test_admins_never_log_in_through_it():
    auth = AnonymousAuthenticator(admin_users={"root-admin"})
    assert auth.check_blocked_users("root-admin") is False
    assert auth.check_blocked_users("numpy-abc") is True


def test_the_address_of_a_server_is_not_a_proxy():
    """A user pod's address (its server's, in the hub database) is no proxy's: what it
    says in X-Forwarded-For is not believed (AnonymousAuthenticator.peer_may_forward)."""
    db = orm.new_session_factory("sqlite:///:memory:")()
    user = orm.User(name="visitor")
    db.add(user)
    spawner = orm.Spawner(user=user, name="")
    spawner.server = orm.Server(ip="10.1.2.3", port=8888)
    db.add(spawner)
    stopped = orm.Spawner(user=user, name="done")
    db.add(stopped)
    db.commit()
    assert AnonymousAuthenticator._runs_a_server(db, "10.1.2.3")
    assert not AnonymousAuthenticator._runs_a_server(db, "10.1.2.4")
