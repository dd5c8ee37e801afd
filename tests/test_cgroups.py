"""Cgroup v1 and v2 handling against the kernel's file interface, laid out in a directory.

The machines this project is tested on mount cgroup v1 (the real v1 path is
exercised by tests/test_sandbox.py and the local-mode hub tests); most user
machines run cgroup v2. Both are driven here through the same files the
kernel offers, so detection and every write can be checked.
"""

import os

import pytest

from binder_spawner.cgroups import (
    Cgroup,
    CgroupError,
    Limits,
    cgroup_name,
    detect,
    parse_proc_cgroup,
)

LIMITS = Limits(memory_max=2 * 1024**3, memory_guarantee=1024**3, pids_max=512)


def read(path):
    with open(path) as f:
        return f.read()


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def test_parse_proc_cgroup():
    text = (
        "9:name=systemd:/\n8:pids:/user.slice\n4:memory:/hub\n1:cpu,cpuacct:/x\n0::/hub.service\n"
    )
    assert parse_proc_cgroup(text) == {
        "name=systemd": "/",
        "pids": "/user.slice",
        "memory": "/hub",
        "cpu": "/x",
        "cpuacct": "/x",
        "": "/hub.service",
    }


def test_cgroup_names_are_safe():
    assert cgroup_name("abc123", "server", 7, "my/server ../x") == "abc123-server-7-my_server_.._x"
    assert "/" not in cgroup_name("..", "/etc/passwd")
    assert len(cgroup_name("x" * 500)) <= 200


@pytest.fixture
def v2(tmp_path):
    root = tmp_path / "cgroup"
    hub = root / "system.slice" / "jupyterhub.service"
    write(str(root / "cgroup.controllers"), "cpuset cpu io memory pids\n")
    write(str(hub / "cgroup.controllers"), "memory pids\n")
    write(str(hub / "cgroup.procs"), "")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("0::/system.slice/jupyterhub.service\n")
    return root, hub, proc


def test_v2_detected_below_the_hubs_own_cgroup(v2):
    root, hub, proc = v2
    host = detect(root=str(root), proc_self_cgroup=str(proc))
    assert host.version == 2
    parent = hub / "jupyterhub-binder"
    assert host.parents == {"": str(parent)}
    assert read(hub / "cgroup.subtree_control") == "+memory +pids"
    assert read(parent / "cgroup.subtree_control") == "+memory +pids"

    group = host.create("h1-server-3", LIMITS)
    path = parent / "h1-server-3"
    assert read(path / "memory.max") == str(2 * 1024**3)
    assert read(path / "memory.low") == str(1024**3)
    assert read(path / "pids.max") == "512"
    assert group.procs_files == [str(path / "cgroup.procs")]

    # the kernel reports an OOM kill in memory.events; the spawner reads it there
    write(str(path / "memory.events"), "low 0\nhigh 0\nmax 12\noom 1\noom_kill 1\n")
    assert group.oom_kills() == 1
    write(str(path / "memory.peak"), "2147483648\n")
    assert group.memory_peak() == 2 * 1024**3


def test_v2_controllers_not_delegated_are_refused_with_the_reason(v2):
    root, hub, proc = v2
    write(str(hub / "cgroup.controllers"), "cpu io\n")
    with pytest.raises(CgroupError, match="memory and pids controllers are not delegated"):
        detect(root=str(root), proc_self_cgroup=str(proc))


def test_v2_explicit_parent(v2, tmp_path):
    root, hub, proc = v2
    delegated = root / "delegated"
    write(str(delegated / "cgroup.controllers"), "memory pids\n")
    host = detect(root=str(root), proc_self_cgroup=str(proc), parent="/delegated")
    assert host.parents == {"": str(delegated / "jupyterhub-binder")}


def test_v1_detected_per_controller(tmp_path):
    root = tmp_path / "cgroup"
    for controller in ("memory", "pids"):
        write(str(root / controller / "cgroup.procs"), "")
    proc = tmp_path / "proc-self-cgroup"
    proc.write_text("8:pids:/\n4:memory:/process_api/abc\n0::/\n")
    host = detect(root=str(root), proc_self_cgroup=str(proc))
    assert host.version == 1
    memory = root / "memory" / "process_api" / "abc" / "jupyterhub-binder"
    pids = root / "pids" / "jupyterhub-binder"
    assert host.parents == {"memory": str(memory), "pids": str(pids)}
    group = host.create("h1-build-key", Limits(memory_max=4 * 1024**3, pids_max=64))
    assert read(memory / "h1-build-key" / "memory.limit_in_bytes") == str(4 * 1024**3)
    assert read(pids / "h1-build-key" / "pids.max") == "64"
    assert sorted(group.procs_files) == sorted(
        [str(memory / "h1-build-key" / "cgroup.procs"), str(pids / "h1-build-key" / "cgroup.procs")]
    )
    write(
        str(memory / "h1-build-key" / "memory.oom_control"),
        "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    )
    assert group.oom_kills() == 2


def test_v1_without_pids_hierarchy_is_refused(tmp_path):
    root = tmp_path / "cgroup"
    write(str(root / "memory" / "cgroup.procs"), "")
    with pytest.raises(CgroupError, match="no cgroup v1 pids hierarchy"):
        detect(root=str(root), proc_self_cgroup=str(tmp_path / "none"))


def test_nothing_mounted_is_refused(tmp_path):
    with pytest.raises(CgroupError):
        detect(root=str(tmp_path / "empty"), proc_self_cgroup=str(tmp_path / "none"))


def test_kill_of_an_empty_or_missing_cgroup_is_done(tmp_path):
    group = Cgroup(1, {"memory": str(tmp_path / "gone"), "pids": str(tmp_path / "gone2")})
    assert group.kill()
    assert group.pids() == set()
    group.remove()  # idempotent
