"""The local-mode sandbox: real bubblewrap runs of Python, probing what a server can reach."""

import asyncio
import json
import os
import shutil
import sys
import tempfile
import textwrap

import pytest

from binder_spawner.sandbox import LAUNCHER, SANDBOX_HOME, Sandbox, sandbox_command, trusted_which
from binder_spawner.seal import chown_tree

from .utils import poll, uid_base

PYTHON = "/usr/bin/python3"  # under /usr: visible in every sandbox


def test_command_shape():
    cmd = sandbox_command(
        ["/usr/bin/python3", "-c", "pass"],
        bwrap="/usr/bin/bwrap",
        uid=2000005,
        cgroup_procs=["/sys/fs/cgroup/memory/x/cgroup.procs"],
        rlimits={"core": 0, "nproc": 64},
        seccomp_program=b"\x06\x00\x00\x00\x00\x00\xff\x7f",
        system_paths=["/usr"],
        ro_binds=[("/srv/envs/abc", "/srv/binder")],
        tmpfs_size=2 * 1024**3,
        home=SANDBOX_HOME,
        home_size=1024**3,
        chdir="/",
    )
    # the hub's own interpreter, isolated, runs the launcher by absolute path
    assert cmd[0] == sys.executable and cmd[1:3] == ["-I", "-S"]
    assert cmd[3] == LAUNCHER and os.path.isabs(LAUNCHER)
    spec = json.loads(cmd[4])
    assert spec["uid"] == 2000005
    assert spec["cgroups"] == ["/sys/fs/cgroup/memory/x/cgroup.procs"]
    assert spec["rlimits"] == {"core": 0, "nproc": 64}
    assert bytes.fromhex(spec["seccomp"]).startswith(b"\x06")
    assert cmd[5:7] == ["--", "/usr/bin/bwrap"]
    for flag in ("--unshare-all", "--share-net", "--die-with-parent", "--new-session"):
        assert flag in cmd
    assert "--disable-userns" in cmd and cmd[cmd.index("--seccomp") + 1] == "3"
    joined = " ".join(cmd)
    assert "--ro-bind /srv/envs/abc /srv/binder" in joined
    # every tmpfs has a size, the home too, and / and /dev are read-only
    gb2 = str(2 * 1024**3)
    for path in ("/tmp", "/run", "/dev/shm"):
        assert f"--size {gb2} --tmpfs {path}" in joined
    assert f"--size {1024**3} --perms 0700 --tmpfs {SANDBOX_HOME}" in joined
    assert "--remount-ro / " in joined and "--remount-ro /dev " in joined
    assert joined.index("--tmpfs /tmp") < joined.index("--ro-bind /srv/envs/abc")
    assert cmd[-4:] == ["--", "/usr/bin/python3", "-c", "pass"]


def test_programs_must_be_absolute():
    # a bare name would be looked up on the child's PATH, which an environment controls
    with pytest.raises(ValueError, match="absolute"):
        sandbox_command(["python3"], bwrap="/usr/bin/bwrap")
    with pytest.raises(ValueError, match="absolute"):
        sandbox_command(["/usr/bin/python3"], bwrap="bwrap")
    with pytest.raises(Exception, match="absolute"):
        Sandbox(bwrap_path="bwrap")


def test_trusted_which_ignores_writable_and_foreign_programs(tmp_path):
    good = tmp_path / "good"
    bad = tmp_path / "bad"
    for d in (good, bad):
        d.mkdir()
    for d, mode in ((good, 0o755), (bad, 0o777)):
        tool = d / "tool"
        tool.write_text("#!/bin/sh\n")
        tool.chmod(mode)
    assert trusted_which("tool", f"{bad}:{good}") == str(good / "tool")
    assert trusted_which("bwrap") == "/usr/bin/bwrap"
    assert trusted_which("no-such-tool-binder") is None


def test_no_uid_switch_when_not_root():
    cmd = sandbox_command(["/bin/true"], bwrap="/usr/bin/bwrap", uid=None)
    assert json.loads(cmd[4])["uid"] is None


def test_uid_base_must_be_unprivileged():
    with pytest.raises(Exception, match="uid_base"):
        Sandbox(uid_base=0)


@pytest.fixture(scope="module")
def layout():
    """A hub directory, two homes and an environment, laid out like a local-mode hub's."""
    root = tempfile.mkdtemp(prefix="binder-sandbox-")
    os.chmod(root, 0o711)
    hub = os.path.join(root, "hub")
    os.makedirs(hub, mode=0o755)
    # the hub's database is world-readable on disk, as sqlite creates it
    with open(os.path.join(hub, "jupyterhub.sqlite"), "w") as f:
        f.write("hub database")
    os.chmod(os.path.join(hub, "jupyterhub.sqlite"), 0o644)
    with open(os.path.join(hub, "jupyterhub_cookie_secret"), "w") as f:
        f.write("cookie secret")
    sandbox = Sandbox(memory_limit="512M", process_limit=32, uid_base=uid_base())
    homes = os.path.join(root, "homes")
    os.makedirs(homes, mode=0o711)
    paths = {"root": root, "hub": hub, "homes": homes}
    for name, user_id in (("alice", 1), ("bob", 2)):
        home = os.path.join(homes, name)
        os.makedirs(home, mode=0o700)
        with open(os.path.join(home, "notes.txt"), "w") as f:
            f.write(f"{name}'s notes")
        chown_tree(home, sandbox.server_uid(user_id) or os.getuid())
        paths[name] = home
    for name in ("env-a", "env-b"):
        env = os.path.join(root, "envs", name)
        os.makedirs(env)
        with open(os.path.join(env, "marker"), "w") as f:
            f.write(name)
        paths[name] = env
    os.chmod(os.path.join(root, "envs"), 0o711)
    yield sandbox, paths
    shutil.rmtree(root, ignore_errors=True)


PROBE = """
import json, os, resource
paths = json.loads(os.environ["PROBE_PATHS"])
result = {"uid": os.getuid(), "euid": os.geteuid(), "cwd": os.getcwd()}

def can_read(path):
    try:
        with open(path) as f:
            f.read()
        return True
    except OSError:
        return False

def can_write(path):
    try:
        with open(path, "w") as f:
            f.write("x")
        return True
    except OSError:
        return False

result["read_db"] = can_read(os.path.join(paths["hub"], "jupyterhub.sqlite"))
result["read_secret"] = can_read(os.path.join(paths["hub"], "jupyterhub_cookie_secret"))
result["hub_dir_visible"] = os.path.exists(paths["hub"])
result["read_bob"] = can_read(os.path.join(paths["bob"], "notes.txt"))
result["bob_visible"] = os.path.exists(paths["bob"])
result["read_own_notes"] = can_read(os.path.expanduser("~/notes.txt"))
result["write_home"] = can_write(os.path.expanduser("~/new.txt"))
result["read_env_a"] = can_read(os.path.join(paths["env-a"], "marker"))
result["write_env_a"] = can_write(os.path.join(paths["env-a"], "marker"))
result["read_env_b"] = can_read(os.path.join(paths["env-b"], "marker"))
result["processes"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
result["hub_token_leaked"] = "HUB_SECRET" in os.environ
result["rlimit_as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
result["homes"] = os.listdir("/home")
print(json.dumps(result))
"""


async def run_sandboxed(sandbox, paths, code, *, user_id=1, cgroup=None):
    # alice (user 1) gets her home; other users run in /tmp
    home = [(paths["alice"], SANDBOX_HOME)] if user_id == 1 else []
    cmd = sandbox.command(
        [PYTHON, "-c", textwrap.dedent(code)],
        uid=sandbox.server_uid(user_id),
        cgroup=cgroup,
        ro_binds=[(paths["env-a"], paths["env-a"])],
        rw_binds=home,
        chdir=SANDBOX_HOME if home else "/tmp",
    )
    env = {"PROBE_PATHS": json.dumps(paths), "HOME": SANDBOX_HOME, "PATH": "/usr/bin:/bin"}
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    return proc.returncode, out.decode(), err.decode()


async def test_server_sees_only_its_home_and_environment(layout, monkeypatch):
    sandbox, paths = layout
    # a secret in the hub's own environment must not be inherited
    monkeypatch.setenv("HUB_SECRET", "x")
    code, out, err = await run_sandboxed(sandbox, paths, PROBE)
    assert code == 0, err
    result = json.loads(out)
    assert result["uid"] != 0 and result["euid"] != 0
    if os.geteuid() == 0:
        assert result["uid"] == sandbox.server_uid(1)
    assert result["cwd"] == SANDBOX_HOME
    assert result["read_own_notes"] and result["write_home"]
    # the hub's directory, database and cookie secret are not there at all
    assert not result["hub_dir_visible"]
    assert not result["read_db"] and not result["read_secret"]
    # nor another user's home, nor another environment
    assert not result["bob_visible"] and not result["read_bob"]
    assert not result["read_env_b"]
    assert result["homes"] == ["jovyan"]
    # its own environment is readable but read-only
    assert result["read_env_a"] and not result["write_env_a"]
    # a pid namespace of its own: only the sandbox's processes are visible
    assert len(result["processes"]) <= 3
    assert not result["hub_token_leaked"]
    assert result["rlimit_as"] == 512 * 1024**2
    assert read(paths["bob"], "notes.txt") == "bob's notes"


def read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


async def test_memory_limit(layout):
    sandbox, paths = layout
    code, out, err = await run_sandboxed(
        sandbox,
        paths,
        """
        try:
            block = bytearray(1024 ** 3)
            print("allocated")
        except MemoryError:
            print("refused")
        """,
    )
    assert code == 0, err
    assert out.strip() == "refused"


async def test_process_limit(layout):
    sandbox, paths = layout
    code, out, err = await run_sandboxed(
        sandbox,
        paths,
        """
        import os, time
        children = []
        refused = False
        for i in range(64):
            try:
                pid = os.fork()
            except BlockingIOError:
                refused = True
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        print("refused" if refused else "forked %d" % len(children))
        """,
        user_id=3,
    )
    assert code == 0, err
    assert out.strip() == "refused"


async def test_sandbox_processes_die_with_their_parent(layout):
    sandbox, paths = layout
    cmd = sandbox.command(
        [PYTHON, "-c", "import time; print('up', flush=True); time.sleep(60)"],
        uid=sandbox.server_uid(4),
    )
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"}
    )
    assert (await proc.stdout.readline()).strip() == b"up"
    proc.terminate()  # what LocalProcessSpawner.stop() does to the pid it started
    assert await asyncio.wait_for(proc.wait(), 10) != 0
    # nothing of it survives: no process of that uid remains
    uid = sandbox.server_uid(4)
    if uid is not None:

        def gone():
            return not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == uid]

        await poll(gone, timeout=10, message=f"the processes of uid {uid} to end")


def _uid_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except OSError:
        return None


# -- kernel limits: cgroups, seccomp, user namespaces ---------------------------------


@pytest.fixture
def cgroup_sandbox():
    sandbox = Sandbox(
        memory_limit="384M", memory_guarantee="128M", process_limit=64, uid_base=uid_base()
    )
    if sandbox.preflight() is None:
        pytest.fail("these tests run as root on a host with cgroups (CI does)")
    groups = []

    def make(name):
        group = sandbox.create_cgroup(f"test-{os.getpid()}-{name}")
        groups.append(group)
        return group

    yield sandbox, make
    for group in groups:
        group.remove()


MEMORY_HOGS = {
    "processes": """
        import multiprocessing, time
        def hog():
            block = bytearray(200 * 1024**2)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(3)
        procs = [multiprocessing.Process(target=hog) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        # v1 kills one process of the cgroup: not every child may end well
        print("survived" if all(p.exitcode == 0 for p in procs) else "killed")
        """,
    "tmp": """
        with open("/tmp/fill", "wb") as f:
            for _ in range(600):
                f.write(b"x" * 1024**2)
        print("survived")
        """,
    "dev-shm": """
        with open("/dev/shm/fill", "wb") as f:
            for _ in range(600):
                f.write(b"x" * 1024**2)
        print("survived")
        """,
}


@pytest.mark.parametrize("kind", sorted(MEMORY_HOGS))
async def test_memory_limit_counts_every_process_and_tmpfs(layout, cgroup_sandbox, kind):
    # 600 MB across three processes, or into a tmpfs, against a 384 MB limit:
    # each process alone is under the limit, so only the cgroup can stop it
    sandbox, make = cgroup_sandbox
    paths = layout[1]
    group = make(kind)
    code, out, err = await run_sandboxed(sandbox, paths, MEMORY_HOGS[kind], user_id=5, cgroup=group)
    assert "survived" not in out
    assert group.oom_kills() >= 1
    # the cgroup counted all of it (processes and tmpfs pages) up to its limit; the
    # host's free memory says nothing here, another test run may share the host
    assert 0.9 * 384 * 1024**2 <= group.memory_peak() <= 384 * 1024**2


async def test_process_limit_is_per_cgroup(layout, cgroup_sandbox):
    sandbox, make = cgroup_sandbox
    group = make("pids")
    code, out, err = await run_sandboxed(
        sandbox,
        layout[1],
        """
        import os, time
        children = []
        refused = False
        for i in range(100):
            try:
                pid = os.fork()
            except BlockingIOError:
                refused = True
                break
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
        print("refused after %d" % len(children) if refused else "forked all")
        """,
        user_id=6,
        cgroup=group,
    )
    assert out.startswith("refused after"), (out, err)
    assert int(out.split()[-1]) < 64
    # the cgroup is emptied by kill(), whatever the processes do
    assert group.kill() and not group.pids()


SYSCALL_PROBE = """
import ctypes, errno, os, subprocess
libc = ctypes.CDLL(None, use_errno=True)
result = {}
KEYCTL = {"x86_64": 250, "aarch64": 219}[os.uname().machine]
result["keyctl"] = (libc.syscall(KEYCTL, 0, 0, 0, 0), ctypes.get_errno())
unshare = subprocess.run(["/usr/bin/unshare", "--user", "/bin/true"], capture_output=True)
result["unshare_user"] = unshare.returncode
for path in ("/planted", "/dev/planted"):
    try:
        open(path, "w").write("x")
        result[path] = "written"
    except OSError as e:
        result[path] = errno.errorcode[e.errno]
print(__import__("json").dumps(result))
"""


async def test_kernel_interfaces_and_user_namespaces_are_refused(layout):
    sandbox, paths = layout
    code, out, err = await run_sandboxed(sandbox, paths, SYSCALL_PROBE, user_id=7)
    assert code == 0, err
    result = json.loads(out)
    assert result["keyctl"] == [-1, 1]  # EPERM from the seccomp filter
    assert result["unshare_user"] != 0  # --disable-userns
    assert result["/planted"] == "EROFS" and result["/dev/planted"] == "EROFS"


async def test_launcher_refuses_relative_programs():
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-I",
        "-S",
        LAUNCHER,
        "{}",
        "--",
        "bwrap",
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2 and b"absolute" in err
