"""Pure parts of binder_service: limit decisions, the reservation store, cull rules."""

from datetime import datetime, timedelta, timezone

import pytest

from binder_service.culler import Culler, CullRules, cull_reason, deletable, user_kind
from binder_service.limits import (
    LimitExceeded,
    LimitRules,
    Observed,
    ReservationStore,
    decide,
    reservation_id,
)
from binder_service.utils import isoformat, parse_date

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)


def at(seconds):
    return T0 + timedelta(seconds=seconds)


def iso(seconds):
    return isoformat(at(seconds))


# --- limits ---------------------------------------------------------------


def test_rules_overrides_take_the_highest_match():
    rules = LimitRules.from_config(10, {"gh/big-org/.*": 50, "gh/big-org/huge": 500}, 0)
    assert rules.repo_limit("gh/other/repo") == 10
    assert rules.repo_limit("gh/big-org/small") == 50
    assert rules.repo_limit("GH/Big-Org/Huge") == 500
    # full match only: a prefix is not enough
    assert rules.repo_limit("gh/big-org/huge-fork") == 50


@pytest.mark.parametrize(
    "repo_usage, total_usage, admitted, kind",
    [
        pytest.param(1, 5, True, "", id="room"),
        pytest.param(2, 5, False, "repo", id="repo-full"),
        pytest.param(0, 8, False, "total", id="total-full"),
        pytest.param(2, 8, False, "total", id="both-full-total-first"),
    ],
)
def test_decide(repo_usage, total_usage, admitted, kind):
    decision = decide(LimitRules(per_repo=2, total=8), "gh/a/b", repo_usage, total_usage)
    assert decision.admitted is admitted
    assert decision.kind == kind


def test_refusal_messages_name_the_limit():
    rules = LimitRules(per_repo=2, total=8)
    repo = decide(rules, "gh/a/b", 2, 2).message("gh/a/b")
    assert repo.startswith("gh/a/b already has 2 running sessions, the limit")
    total = decide(rules, "gh/a/b", 0, 8).message("gh/a/b")
    assert "8 Binder sessions" in total and "gh/a/b" not in total


def test_zero_means_no_limit():
    assert decide(LimitRules(per_repo=0, total=0), "gh/a/b", 10**6, 10**6).admitted


def test_reserve_is_idempotent_and_bounded():
    store = ReservationStore(LimitRules(per_repo=2), ttl=60)
    first, created = store.reserve("u1", "", "gh/a/b", at(0))
    again, created_again = store.reserve("u1", "", "gh/a/b", at(5))
    assert created and not created_again and first is again
    assert again.expires_at == at(65)
    store.reserve("u2", "", "gh/a/b", at(5))
    with pytest.raises(LimitExceeded) as refused:
        store.reserve("u3", "", "gh/a/b", at(5))
    assert refused.value.decision.usage == 2
    assert store.usage() == {"total": 2, "repos": {"gh/a/b": 2}}
    # another repository is not affected
    store.reserve("u3", "", "gh/c/d", at(5))
    assert store.usage()["total"] == 3


def test_same_server_moving_to_another_repo_frees_the_first():
    store = ReservationStore(LimitRules(per_repo=1), ttl=60)
    store.reserve("u1", "", "gh/a/b", at(0))
    slot, created = store.reserve("u1", "", "gh/c/d", at(1))
    assert created and slot.repo == "gh/c/d"
    assert store.usage()["repos"] == {"gh/c/d": 1}
    store.reserve("u2", "", "gh/a/b", at(2))


def test_release_and_ids_are_stable():
    store = ReservationStore(LimitRules(per_repo=1))
    slot, _ = store.reserve("u1", "x", "gh/a/b", at(0))
    assert slot.id == reservation_id("u1", "x") != reservation_id("u1", "")
    assert store.release(slot.id) is slot
    assert store.release(slot.id) is None
    assert store.usage() == {"total": 0, "repos": {}}


def test_unobserved_reservations_expire():
    store = ReservationStore(LimitRules(per_repo=1), ttl=60)
    store.reserve("u1", "", "gh/a/b", at(0))
    with pytest.raises(LimitExceeded):
        store.reserve("u2", "", "gh/a/b", at(59))
    # at the ttl, the slot is free again
    store.reserve("u2", "", "gh/a/b", at(60))
    assert store.slot("u1", "") is None


def test_observed_reservations_do_not_expire_and_stopped_servers_are_dropped():
    store = ReservationStore(LimitRules(per_repo=5), ttl=60)
    store.reserve("u1", "", "gh/a/b", at(0))
    store.reconcile({("u1", ""): Observed("gh/a/b", ready=True)}, at(1), at(1))
    assert store.usage(at(1000))["repos"] == {"gh/a/b": 1}
    # the server stopped: the next listing lacks it
    added, dropped = store.reconcile({}, at(1001), at(1001))
    assert [s.user for s in dropped] == ["u1"] and not added
    assert store.usage()["total"] == 0


def test_reservation_of_a_server_seen_on_the_hub_goes_with_the_server():
    """A visitor's reservation is verified against the hub (``seen``): when its server
    is gone before a listing ever showed it, the next reconciliation drops it.
    Unseen, it would hold the repository's slot for the whole ttl with nothing running."""
    store = ReservationStore(LimitRules(per_repo=1), ttl=900)
    store.reserve("visitor", "s1", "gh/a/b", at(0), seen=True)
    store.reserve("admin-made", "", "gh/c/d", at(0))
    store.reconcile({}, at(1), at(2))
    assert store.usage()["repos"] == {"gh/c/d": 1}
    store.reserve("other", "", "gh/a/b", at(3))


def test_reservation_younger_than_the_listing_is_kept():
    store = ReservationStore(LimitRules(per_repo=5), ttl=60)
    store.reserve("u1", "", "gh/a/b", at(10))
    # a listing that started before the reservation cannot contain its server
    store.reconcile({}, at(5), at(11))
    assert store.usage()["total"] == 1


def test_pending_server_seen_before_its_reservation_is_decided_by_it():
    store = ReservationStore(LimitRules(per_repo=2), ttl=60)
    observed = {
        ("u1", ""): Observed("gh/a/b", ready=True),
        ("u2", ""): Observed("gh/a/b", ready=True),
        ("u3", ""): Observed("gh/a/b", ready=False),
    }
    store.reconcile(observed, at(0), at(0))
    assert store.usage()["repos"] == {"gh/a/b": 2}
    with pytest.raises(LimitExceeded):
        store.reserve("u3", "", "gh/a/b", at(1))
    # when one stops, the pending one gets in
    del observed[("u1", "")]
    store.reconcile(observed, at(2), at(2))
    slot, created = store.reserve("u3", "", "gh/a/b", at(3))
    assert created and slot.seen
    assert store.usage()["repos"] == {"gh/a/b": 2}


def test_rebuild_after_restart_admits_pending_servers_in_start_order():
    store = ReservationStore(LimitRules(per_repo=2), ttl=60)
    observed = {
        ("late", ""): Observed("gh/a/b", ready=False, started=at(30)),
        ("run", ""): Observed("gh/a/b", ready=True, started=at(0)),
        ("early", ""): Observed("gh/a/b", ready=False, started=at(10)),
        ("other", ""): Observed(None, ready=True),  # not a Binder server
    }
    store.reconcile(observed, at(40), at(40), initial=True)
    assert store.usage()["repos"] == {"gh/a/b": 2}
    assert store.slot("early", "").admitted and not store.slot("late", "").admitted
    assert store.slot("other", "") is None
    # the admitted pending server's spawner renews; the late one is refused
    assert store.reserve("early", "", "gh/a/b", at(41))[1] is False
    with pytest.raises(LimitExceeded):
        store.reserve("late", "", "gh/a/b", at(41))


def test_total_limit_counts_every_repository():
    store = ReservationStore(LimitRules(per_repo=10, total=2))
    store.reserve("u1", "", "gh/a/b", at(0))
    store.reserve("u2", "", "gh/c/d", at(0))
    with pytest.raises(LimitExceeded) as refused:
        store.reserve("u3", "", "gh/e/f", at(0))
    assert refused.value.decision.kind == "total"


# --- culling ----------------------------------------------------------------


def server(started=0, last_activity=None, pending=None, ready=True):
    return {
        "started": iso(started),
        "last_activity": iso(last_activity) if last_activity is not None else None,
        "pending": pending,
        "ready": ready,
        "stopped": False,
    }


@pytest.mark.parametrize(
    "model, now, reason",
    [
        pytest.param(server(0, 0), 599, None, id="active"),
        pytest.param(server(0, 0), 600, "idle", id="idle"),
        pytest.param(server(0, None), 600, "idle", id="never-active-uses-start"),
        pytest.param(server(0, 1000), 1200, "max_age", id="old-but-active"),
        pytest.param(server(0, 0, pending="spawn", ready=False), 700, None, id="long-build"),
        pytest.param(
            server(0, 0, pending="spawn", ready=False), 1200, "max_age", id="build-too-long"
        ),
        pytest.param(server(0, 0, pending="stop"), 5000, None, id="already-stopping"),
    ],
)
def test_cull_reason(model, now, reason):
    assert cull_reason(model, CullRules(timeout=600, max_age=1200), at(now)) == reason


def test_cull_rules_zero_disables():
    assert cull_reason(server(0, 0), CullRules(), at(10**6)) is None


def user(name, *, admin=False, groups=(), servers=None, created=0, last_activity=0):
    return {
        "name": name,
        "admin": admin,
        "groups": list(groups),
        "servers": servers or {},
        "created": iso(created),
        "last_activity": iso(last_activity),
        "pending": None,
    }


def test_user_kinds_and_separate_rules():
    anon = user("a", groups=["binder-anonymous"], servers={"": server(0, 0)})
    admin = user("b", admin=True, groups=["binder-anonymous"], servers={"": server(0, 0)})
    registered = user("c", servers={"": server(0, 0), "named": server(0, 3000)})
    assert [user_kind(u, "binder-anonymous") for u in (anon, admin, registered)] == [
        "anonymous",
        "admin",
        "registered",
    ]
    culler = Culler(hub=None, clock=None, timeout=600, registered_timeout=3600)
    selected = culler.select([anon, admin, registered], at(3600))
    assert [(u["name"], s, r) for u, s, r in selected] == [("a", "", "idle"), ("c", "", "idle")]
    culler.cull_admin_users = True
    assert ("b", "") in {(u["name"], s) for u, s, _ in culler.select([admin], at(3600))}


def test_deletable_only_quiet_anonymous_users_without_servers():
    group = "binder-anonymous"
    assert deletable(user("a", groups=[group]), group, 60, at(60))
    assert not deletable(user("a", groups=[group]), group, 60, at(59))  # just arrived
    assert not deletable(user("a", groups=[group], servers={"": server()}), group, 60, at(999))
    assert not deletable(user("r"), group, 60, at(999))
    assert not deletable(user("adm", admin=True, groups=[group]), group, 60, at(999))


def test_activity_keeps_an_identity_without_a_server_only_so_long():
    """Any request with a visitor's token, or its own activity report (up to an hour
    ahead), made it "active": an identity without sessions lived for ever."""
    group = "binder-anonymous"
    pinging = user("a", groups=[group], created=0, last_activity=3600)
    assert not deletable(pinging, group, 60, at(599), serverless_max=600)
    assert deletable(pinging, group, 60, at(600), serverless_max=600)
    # counted from when it last had a server, not from its creation
    assert not deletable(pinging, group, 60, at(900), had_server=at(400), serverless_max=600)
    assert deletable(pinging, group, 60, at(1000), had_server=at(400), serverless_max=600)
    # 0: its activity keeps it, as before
    assert not deletable(pinging, group, 60, at(3000))


def test_clock_seam_moves_a_service_subprocess(tmp_path):
    """tests/clockseam moves ``binder_service.utils.utcnow`` in a subprocess, nothing else."""
    import os
    import subprocess
    import sys

    from tests.clockseam import clock_env

    path = tmp_path / "offset"
    path.write_text(str(2 * 86400))
    probe = "from binder_service import app, utils; print(app.now().isoformat())"
    env = {**os.environ, **clock_env(path)}
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    moved = datetime.fromisoformat(out.strip())
    assert (moved - datetime.now(timezone.utc)).total_seconds() > 86400
    path.write_text("garbage")
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert (datetime.fromisoformat(out.strip()) - datetime.now(timezone.utc)).total_seconds() < 3600


def test_parse_date_roundtrip():
    assert parse_date(iso(5)) == at(5)
    assert parse_date("2026-01-01T12:00:00.000000Z") == T0
    assert parse_date(None) is None


async def test_health_is_503_when_the_hub_is_unreachable():
    import aiohttp
    from tornado.httpserver import HTTPServer

    from binder_service.app import BinderService

    from .utils import free_port

    port = free_port()
    app = BinderService()
    app.initialize(
        [
            f"--HubAPI.api_url=http://127.0.0.1:{free_port()}/hub/api",
            "--HubAPI.retries=0",
            "--HubAPI.timeout=2",
        ]
    )
    server = HTTPServer(app.make_app())
    server.listen(port, "127.0.0.1")
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{port}/services/binder/health"
            async with session.get(url) as resp:
                assert resp.status == 503
                assert await resp.json() == {
                    "ok": False,
                    "checks": [{"service": "hub", "ok": False}],
                }
    finally:
        server.stop()


@pytest.mark.parametrize(
    "name, text",
    [
        pytest.param(
            "binder_service_config.py",
            "c.BinderService.per_repo_limit = 7\nc.Culler.timeout = 42\n",
            id="py",
        ),
        pytest.param(
            "binder_service_config.json",
            '{"BinderService": {"per_repo_limit": 7}, "Culler": {"timeout": 42}}',
            id="json",
        ),
    ],
)
def test_config_file_and_command_line(tmp_path, name, text):
    from binder_service.app import BinderService

    path = tmp_path / name
    path.write_text(text)
    app = BinderService()
    app.initialize([f"--config={path}", "--max-age=99", "--per-repo-limit=8"])
    assert app.culler.timeout == 42
    assert app.culler.max_age == 99
    assert app.per_repo_limit == 8  # the command line wins
    assert app.store.rules.per_repo == 8


@pytest.mark.parametrize(
    "command",
    [
        pytest.param(["-m", "binder_service"], id="python-m"),
        pytest.param(["-m", "binder_service.cli", "service"], id="jupyterhub-binder-service"),
    ],
)
def test_command_line_help(command):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, *command, "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    for flag in ("--per-repo-limit", "--timeout", "--max-age", "--kubernetes", "--config"):
        assert flag in result.stdout
