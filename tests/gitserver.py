"""A real git smart-HTTP server on loopback, for tests.

``git http-backend`` (the CGI program that ships with git) runs behind a small
threaded HTTP server, the way a real git host serves repositories over
``http://``. Repositories are bare repositories in a temporary folder, built
with git plumbing (no work tree):

    url = git_server.create_repo("org/repo", {"README.md": "hi"})
    sha = git_server.commit("org/repo", {"a.txt": "a"}, message="more")
    git_server.tag("org/repo", "v1")
    git_server.delete_branch("org/repo", "feature")

A repository is reachable with and without ``.git`` (``http-backend`` tries
both), like on GitHub. ``set_private(name)`` makes the server answer 401 for
it (what GitHub answers for a missing or private repository), ``hold(name)``
makes requests for it wait until ``release(name)`` (for timeout tests), and
``requests[name]`` counts the ref advertisements served per repository, and
``redirect(name, url)`` answers 301 for it (as a renamed GitHub repository).
"""

import collections
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.org",
    "GIT_COMMITTER_NAME": "Test Author",
    "GIT_COMMITTER_EMAIL": "author@example.org",
    "GIT_TERMINAL_PROMPT": "0",
}


class GitServer:
    """Bare repositories under ``root`` served over smart HTTP on 127.0.0.1."""

    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.private = set()
        self.redirects = {}
        self.requests = collections.Counter()
        self._holds = {}
        self._lock = threading.Lock()
        self._httpd = None
        self._thread = None
        self.url = None

    # --- server -------------------------------------------------------------

    def start(self):
        handler = type("Handler", (_GitHandler,), {"server_state": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self.host = "127.0.0.1:%d" % self._httpd.server_address[1]
        self.url = "http://" + self.host
        self._thread = threading.Thread(
            target=self._httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="git-server",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self):
        for event in list(self._holds.values()):
            event.set()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # --- repositories -------------------------------------------------------

    def path(self, name):
        name = name.strip("/")
        if name.endswith(".git"):
            name = name[: -len(".git")]
        return self.root / (name + ".git")

    def repo_url(self, name):
        return f"{self.url}/{name.strip('/')}"

    def git(self, name, *args, input=None, env=None):
        """Run git in the bare repository ``name``; returns stdout (str)."""
        full_env = dict(os.environ)
        full_env.update(GIT_ENV)
        full_env.update(env or {})
        result = subprocess.run(
            ["git", *args],
            cwd=self.path(name),
            input=input,
            capture_output=True,
            env=full_env,
            check=False,
        )
        if result.returncode:
            raise RuntimeError(
                "git %s failed: %s" % (" ".join(args), result.stderr.decode(errors="replace"))
            )
        return result.stdout.decode().strip()

    def create_empty_repo(self, name, branch="main"):
        """A repository without any commit (``HEAD`` points to ``branch``); returns its URL."""
        path = self.path(name)
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        self.git(name, "init", "--bare", "--quiet", "--initial-branch", branch, ".")
        return self.repo_url(name)

    def create_repo(self, name, files=None, branch="main"):
        """A repository with one commit of ``files`` on ``branch``; returns its URL."""
        url = self.create_empty_repo(name, branch=branch)
        self.commit(name, files or {"README.md": f"# {name}\n"}, message="initial", branch=branch)
        return url

    def commit(self, name, files, message="update", branch="main"):
        """Commit ``files`` ({path: str | bytes | ("symlink", target) | None to delete}) on ``branch``.

        Creates the branch (from nothing) if it does not exist. Returns the new commit SHA.
        """
        index = self.path(name) / f"index-{threading.get_ident()}"
        env = {"GIT_INDEX_FILE": str(index)}
        try:
            parent = self.sha(name, branch)
            if parent:
                self.git(name, "read-tree", parent, env=env)
            else:
                self.git(name, "read-tree", "--empty", env=env)
            for path, content in files.items():
                if content is None:
                    self.git(name, "update-index", "--force-remove", "--", path, env=env)
                    continue
                mode = "100644"
                if isinstance(content, tuple) and content[0] == "symlink":
                    mode, content = "120000", content[1]
                if isinstance(content, str):
                    content = content.encode()
                blob = self.git(name, "hash-object", "-w", "--stdin", input=content)
                self.git(
                    name, "update-index", "--add", "--cacheinfo", f"{mode},{blob},{path}", env=env
                )
            tree = self.git(name, "write-tree", env=env)
        finally:
            index.unlink(missing_ok=True)
        args = ["commit-tree", tree, "-m", message]
        if parent:
            args += ["-p", parent]
        sha = self.git(name, *args)
        self.git(name, "update-ref", f"refs/heads/{branch}", sha)
        return sha

    def sha(self, name, ref="HEAD"):
        """The commit SHA ``ref`` points to, or None."""
        try:
            return self.git(name, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}")
        except RuntimeError:
            return None

    def branch(self, name, branch, start="main"):
        """Create ``branch`` at ``start``; returns its SHA."""
        self.git(name, "branch", "--", branch, start)
        return self.sha(name, branch)

    def tag(self, name, tag, ref="main", annotated=False):
        """Tag ``ref`` (lightweight, or annotated); returns the tagged commit's SHA."""
        if annotated:
            self.git(name, "tag", "-a", "-m", f"tag {tag}", "--", tag, ref)
        else:
            self.git(name, "tag", "--", tag, ref)
        return self.sha(name, tag)

    def delete_branch(self, name, branch):
        self.git(name, "update-ref", "-d", f"refs/heads/{branch}")

    def set_head(self, name, branch):
        """Point the repository's default branch (``HEAD``) at ``branch``."""
        self.git(name, "symbolic-ref", "HEAD", f"refs/heads/{branch}")

    # --- behaviour switches -------------------------------------------------

    def set_private(self, name, private=True):
        """Answer 401 (authentication required) for ``name``, like GitHub for private repos."""
        key = name.strip("/").removesuffix(".git")
        if private:
            self.private.add(key)
        else:
            self.private.discard(key)

    def redirect(self, name, location):
        """Answer every request for ``name`` with a 301 to ``location`` (+ the rest of the path)."""
        self.redirects[name.strip("/").removesuffix(".git")] = location.rstrip("/")

    def hold(self, name):
        """Make requests for ``name`` wait until :meth:`release` (or the server stops)."""
        key = name.strip("/").removesuffix(".git")
        with self._lock:
            self._holds[key] = threading.Event()

    def release(self, name):
        key = name.strip("/").removesuffix(".git")
        with self._lock:
            event = self._holds.pop(key, None)
        if event is not None:
            event.set()

    def _hold_for(self, key):
        with self._lock:
            return self._holds.get(key)


class _GitHandler(BaseHTTPRequestHandler):
    """Runs ``git http-backend`` as CGI for each request."""

    server_state = None  # set per server
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # quiet: tests dump on failure only
        pass

    def do_GET(self):
        self._cgi()

    def do_POST(self):
        self._cgi()

    def _repo_key(self, path):
        for marker in ("/info/refs", "/git-upload-pack", "/git-receive-pack", "/HEAD"):
            if marker in path:
                return path.split(marker, 1)[0].strip("/").removesuffix(".git")
        return path.strip("/").removesuffix(".git")

    def _read_body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().strip().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _cgi(self):
        state = self.server_state
        path, _, query = self.path.partition("?")
        key = self._repo_key(path)
        hold = state._hold_for(key)
        if hold is not None:
            hold.wait(timeout=120)
        if path.endswith("/info/refs"):
            with state._lock:
                state.requests[key] += 1
        if key in state.redirects:
            suffix = path.split(key, 1)[1].removeprefix(".git")
            self.send_response(301)
            self.send_header(
                "Location", state.redirects[key] + suffix + ("?" + query if query else "")
            )
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if key in state.private:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="git"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body = self._read_body()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(state.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            "CONTENT_TYPE": self.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "SERVER_PROTOCOL": "HTTP/1.0",
            "GATEWAY_INTERFACE": "CGI/1.1",
        }
        for header, var in (
            ("Git-Protocol", "GIT_PROTOCOL"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
        ):
            if self.headers.get(header):
                env[var] = self.headers[header]
        result = subprocess.run(
            ["git", "http-backend"], input=body, capture_output=True, env=env, check=False
        )
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = result.stdout.partition(b"\n\n")
        status = 200
        headers = []
        for line in head.decode("latin-1").splitlines():
            if ":" not in line:
                continue
            name, value = line.split(":", 1)
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            else:
                headers.append((name.strip(), value.strip()))
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        try:
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            # the client gave up (a timeout test, a git that had enough): not a server error
            self.close_connection = True


@pytest.fixture
def git_server(tmp_path_factory):
    """A running :class:`GitServer` (fresh repositories per test)."""
    server = GitServer(tmp_path_factory.mktemp("git")).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def module_git_server(tmp_path_factory):
    """A :class:`GitServer` shared by the tests of one module."""
    server = GitServer(tmp_path_factory.mktemp("git")).start()
    yield server
    server.stop()
