"""The local-mode sandbox: real bubblewrap runs of Python, probing what a server can reach."""

import asyncio
import json
import os
import shutil
import tempfile
import textwrap

import pytest

from binder_spawner.sandbox import SANDBOX_HOME, Sandbox, sandbox_command

from .utils import poll

PYTHON = "/usr/bin/python3"  # under /usr: visible in every sandbox


def test_command_shape():
    cmd = sandbox_command(
        ["python3", "-c", "pass"],
        bwrap="/usr/bin/bwrap",
        uid=2000005,
        memory_limit=2 * 1024**3,
        process_limit=64,
        system_paths=["/usr"],
        ro_binds=[("/srv/envs/abc", "/srv/envs/abc")],
        rw_binds=[("/srv/homes/u", SANDBOX_HOME)],
        chdir=SANDBOX_HOME,
    )
    assert cmd[:6] == [
        "setpriv",
        "--reuid=2000005",
        "--regid=2000005",
        "--clear-groups",
        "--no-new-privs",
        "--",
    ]
    assert cmd[6:11] == ["prlimit", "--core=0", f"--as={2 * 1024**3}", "--nproc=64", "--"]
    assert cmd[11] == "/usr/bin/bwrap"
    for flag in ("--unshare-all", "--share-net", "--die-with-parent", "--new-session"):
        assert flag in cmd
    joined = " ".join(cmd)
    assert "--ro-bind /srv/envs/abc /srv/envs/abc" in joined
    assert f"--bind /srv/homes/u {SANDBOX_HOME}" in joined
    # /tmp is a fresh tmpfs, mounted before the binds so that binds under /tmp survive
    assert joined.index("--tmpfs /tmp") < joined.index("--ro-bind /srv/envs/abc")
    assert cmd[-4:] == ["--", "python3", "-c", "pass"]


def test_no_uid_switch_when_not_root():
    cmd = sandbox_command(["true"], bwrap="bwrap", uid=None)
    assert cmd[0] == "prlimit" and "setpriv" not in cmd


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
    sandbox = Sandbox(memory_limit="512M", process_limit=32)
    homes = os.path.join(root, "homes")
    os.makedirs(homes, mode=0o711)
    paths = {"root": root, "hub": hub, "homes": homes}
    for name, user_id in (("alice", 1), ("bob", 2)):
        home = os.path.join(homes, name)
        os.makedirs(home, mode=0o700)
        with open(os.path.join(home, "notes.txt"), "w") as f:
            f.write(f"{name}'s notes")
        sandbox.chown(home, sandbox.server_uid(user_id))
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


async def run_sandboxed(sandbox, paths, code, *, user_id=1):
    # alice (user 1) gets her home; other users run in /tmp
    home = [(paths["alice"], SANDBOX_HOME)] if user_id == 1 else []
    cmd = sandbox.command(
        [PYTHON, "-c", textwrap.dedent(code)],
        uid=sandbox.server_uid(user_id),
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
