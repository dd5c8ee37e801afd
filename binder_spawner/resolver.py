"""Resolving a ref to a commit with ``git ls-remote``, safely, cached and coalesced.

:class:`RefResolver` is the resolution half of
:class:`binder_spawner.repos.RepoPolicy` (configure it as ``c.RepoPolicy.*``):
the host of a repository URL is resolved once, every address it has is
checked, and git is pinned to those addresses and run with the restrictions
of :func:`binder_spawner.gitref.safe_config`. Results are cached briefly in a
process-wide :class:`ResolveCache` (misses too), and concurrent resolutions
of the same (repository, ref) share one git call.

The policy supplies the checks through hooks: ``_check_host_offline(host,
port)``, ``_is_trusted(host, port)``, ``_banned_networks()``, ``_schemes()``
and ``_fingerprint()`` (the settings a result depends on).
"""

import asyncio
import dataclasses
import ipaddress
import os
import signal
import socket
import time
from collections import OrderedDict
from urllib.parse import urlsplit

from traitlets import Float, Instance, Integer, Unicode, default
from traitlets.config import LoggingConfigurable

from . import gitref, netcheck
from .perprocess import one_per_process
from .providers import SpecError


def _pin_address(address):
    return f"[{address}]" if ":" in address else address


#: Most bytes read from git's stdout or stderr: a ref listing filtered by the
#: requested names is tiny, a hostile server must not fill the hub's memory.
MAX_GIT_OUTPUT = 4 * 1024 * 1024


def _copy_error(error):
    """A fresh exception like a cached one (raising one instance twice chains tracebacks)."""
    return type(error)(error.message, error.status_code)


class _TooMuchOutput(Exception):
    pass


async def _read_bounded(stream, limit):
    chunks = []
    size = 0
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise _TooMuchOutput()
        chunks.append(chunk)


async def _communicate_bounded(proc, limit):
    """(stdout, stderr) of ``proc``, each at most ``limit`` bytes, after it exits."""
    stdout, stderr = await asyncio.gather(
        _read_bounded(proc.stdout, limit), _read_bounded(proc.stderr, limit)
    )
    await proc.wait()
    return stdout, stderr


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class ResolveCache:
    """Resolved (repository, ref) results and in-flight resolutions.

    One process-wide instance (:func:`shared_resolve_cache`) is the default for every
    :class:`RepoPolicy`: JupyterHub makes one spawner, hence one policy, per
    user, and the cache is only useful across users. Bounded by
    :attr:`RepoPolicy.resolve_cache_size`.
    """

    def __init__(self):
        #: key -> (stored at, commit or SpecError), oldest first
        self.entries = OrderedDict()
        #: key -> asyncio task of the resolution in flight
        self.inflight = {}

    def clear(self):
        self.entries.clear()
        self.inflight.clear()


def shared_resolve_cache():
    """The process-wide :class:`ResolveCache`, every :class:`RepoPolicy`'s default."""
    return one_per_process(ResolveCache, ResolveCache)


class RefResolver(LoggingConfigurable):
    """Resolves refs of checked repository URLs (base class of RepoPolicy)."""

    resolve_cache_ttl = Float(
        30.0,
        help="""
        Seconds a resolved (repository, ref) -> commit is reused. Short, because
        branches move. Default 30; 0 disables the cache.

        Example: ``c.RepoPolicy.resolve_cache_ttl = 60``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    resolve_negative_cache_ttl = Float(
        5.0,
        help="""
        Seconds a failed resolution (unknown ref, missing repository, timeout)
        is remembered, so repeated bad links do not each run git. Default 5.

        Example: ``c.RepoPolicy.resolve_negative_cache_ttl = 10``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    resolve_cache_size = Integer(
        4096,
        help="""
        Most (repository, ref) entries the resolve cache holds; the oldest go
        first. Bounds memory whatever strangers send. Default 4096.

        Example: ``c.RefResolver.resolve_cache_size = 5000``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    git_timeout = Float(
        20.0,
        help="""
        Seconds one ``git ls-remote`` (including the DNS lookup) may take before
        the launch is refused with a timeout message. Default 20.

        Example: ``c.RepoPolicy.git_timeout = 10``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    resolve_cache = Instance(
        "binder_spawner.resolver.ResolveCache",
        help="""
        Where resolved refs are kept. Default: one cache shared by every
        RepoPolicy of the process, so all spawners of a hub (one per user)
        share results and in-flight resolutions; entries are keyed by the
        settings they depend on. Pass ``ResolveCache()`` for a private one.

        .. versionadded:: 0.1
        """,
    )

    @default("resolve_cache")
    def _default_resolve_cache(self):
        return shared_resolve_cache()

    git_executable = Unicode(
        "git",
        help="""
        The git program to run. Default ``git`` (from ``PATH``); git >= 2.37
        is needed for address pinning (``http.curloptResolve``).

        Example: ``c.RefResolver.git_executable = "/usr/local/bin/git"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        #: monotonic clock; tests replace it to move time
        self.clock = time.monotonic

    async def resolve(self, spec):
        """A copy of ``spec`` with ``commit`` set to the full SHA its ref points to.

        A full SHA is taken as it is once the repository is known to be
        reachable. Raises :class:`SpecError` with a distinct sentence for an
        unknown ref, a missing or private repository, an empty repository, an
        unreachable host and a timeout.
        """
        if gitref.is_full_sha(spec.ref):
            await self._cached_lookup(spec.repo_url, "HEAD", allow_empty=True)
            return dataclasses.replace(spec, commit=spec.ref)
        commit = await self._cached_lookup(spec.repo_url, spec.ref)
        return dataclasses.replace(spec, commit=commit)

    async def _cached_lookup(self, repo_url, ref, allow_empty=False):
        key = (self._fingerprint(), repo_url, ref, allow_empty)
        return await self._cached_call(key, lambda: self._ls_remote(repo_url, ref, allow_empty))

    async def _cached_call(self, key, lookup):
        """``await lookup()`` through the cache: hits and misses reused, one call in flight.

        ``lookup`` raises :class:`SpecError` (or an error with ``message`` and
        ``status_code``) for a miss, which is remembered for
        :attr:`resolve_negative_cache_ttl` seconds.
        """
        cache = self.resolve_cache
        hit = cache.entries.get(key)
        if hit is not None:
            stored_at, result = hit
            failed = isinstance(result, Exception)
            ttl = self.resolve_negative_cache_ttl if failed else self.resolve_cache_ttl
            if 0 <= self.clock() - stored_at < ttl:
                cache.entries.move_to_end(key)
                if failed:
                    raise _copy_error(result)
                return result
            del cache.entries[key]
        task = cache.inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup_and_store(key, lookup))
            cache.inflight[key] = task
            task.add_done_callback(lambda _: cache.inflight.pop(key, None))
        result = await asyncio.shield(task)
        if isinstance(result, Exception):
            raise _copy_error(result)
        return result

    async def _lookup_and_store(self, key, lookup):
        try:
            result = await lookup()
            ttl = self.resolve_cache_ttl
        except SpecError as e:
            result = e
            ttl = self.resolve_negative_cache_ttl
        except Exception as e:
            if not hasattr(e, "status_code") or not hasattr(e, "message"):
                raise
            result = e
            ttl = self.resolve_negative_cache_ttl
        if ttl > 0:
            entries = self.resolve_cache.entries
            entries[key] = (self.clock(), result)
            entries.move_to_end(key)
            while len(entries) > self.resolve_cache_size:
                entries.popitem(last=False)
        return result

    async def _pins(self, host, port, deadline):
        """Resolve ``host`` once, check every address; returns curl resolve pins."""
        try:
            ipaddress.ip_address(host)
            return []  # a literal: already checked by parse
        except ValueError:
            pass
        trusted = self._is_trusted(host, port)
        if not trusted and netcheck.is_local_name(host):
            raise SpecError(
                f"The repository host {host} is this machine, which is not allowed.", 403
            )
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(
                loop.getaddrinfo(host, port, type=socket.SOCK_STREAM),
                max(0.1, deadline - time.monotonic()),
            )
        except asyncio.TimeoutError:
            raise SpecError(
                f"Timed out looking up the repository host {host}. Try again in a minute.", 408
            ) from None
        except OSError:
            raise SpecError(f"The repository host {host} could not be found.", 404) from None
        addresses = []
        for info in infos:
            address = info[4][0].split("%", 1)[0]
            if address not in addresses:
                addresses.append(address)
        if not trusted:
            banned = self._banned_networks()
            for address in addresses:
                problem = netcheck.address_problem(ipaddress.ip_address(address), banned)
                if problem:
                    self.log.warning("Refusing %s: it resolves to %s (%s)", host, address, problem)
                    raise SpecError(
                        f"The repository host {host} resolves to {problem}; "
                        "only public hosts are allowed.",
                        403,
                    )
        return [f"{host}:{port}:" + ",".join(_pin_address(a) for a in addresses)]

    async def git_config(self, repo_url):
        """git configuration (key, value) pairs for a git process contacting ``repo_url``.

        Checks the host as :meth:`resolve` does (offline rules, then every
        address DNS gives) and returns :func:`binder_spawner.gitref.safe_config`
        with the checked addresses pinned. Use it for anything that clones or
        fetches a stranger's repository after resolution, so DNS cannot point
        the clone elsewhere: as ``-c`` options (:func:`~binder_spawner.gitref.config_args`)
        or environment variables (:func:`~binder_spawner.gitref.config_env`).
        Raises :class:`SpecError`.
        """
        deadline = time.monotonic() + self.git_timeout
        parts = urlsplit(repo_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            host = netcheck.normalise_host(parts.hostname or "")
        except netcheck.HostError as e:
            raise SpecError(str(e)) from None
        self._check_host_offline(host, port)
        pins = await self._pins(host, port, deadline)
        return gitref.safe_config(self._schemes(), pins)

    def _git_env(self):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_", "SSH_"))}
        env.update(
            GIT_TERMINAL_PROMPT="0",
            GIT_ASKPASS="",
            SSH_ASKPASS="",
            GIT_PROTOCOL_FROM_USER="0",
            LC_ALL="C",
            LANGUAGE="C",
        )
        return env

    async def _ls_remote(self, repo_url, ref, allow_empty=False):
        deadline = time.monotonic() + self.git_timeout
        parts = urlsplit(repo_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            host = netcheck.normalise_host(parts.hostname or "")
        except netcheck.HostError as e:
            raise SpecError(str(e)) from None
        self._check_host_offline(host, port)
        pins = await self._pins(host, port, deadline)
        args = gitref.ls_remote_command(
            repo_url, ref, allowed_schemes=self._schemes(), pins=pins, git=self.git_executable
        )
        if ref != "HEAD":
            args.append("HEAD")  # tells an empty repository from an unknown ref
        self.log.debug("Resolving %s %s", repo_url, ref)
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self._git_env(),
            # its own process group: a timeout kills git-remote-http with it
            start_new_session=True,
        )
        try:
            stdout, stderr = await asyncio.wait_for(
                _communicate_bounded(proc, MAX_GIT_OUTPUT), max(0.1, deadline - time.monotonic())
            )
        except _TooMuchOutput:
            _kill_group(proc)
            await proc.wait()
            raise SpecError(
                f"The repository at {repo_url} sent more data than a ref listing needs.", 400
            ) from None
        except asyncio.TimeoutError:
            _kill_group(proc)
            await proc.wait()
            self.log.warning("git ls-remote %s timed out after %ss", repo_url, self.git_timeout)
            raise SpecError(
                f"Timed out contacting the repository at {repo_url}. Try again in a minute.", 408
            ) from None
        error = stderr.decode("utf8", "replace")
        if proc.returncode:
            # the server's own messages ("remote: ...") are in there: log them escaped
            self.log.info("git ls-remote %s failed: %r", repo_url, error.strip()[-500:])
            raise self._classify_git_error(repo_url, error)
        refs = gitref.parse_ls_remote(stdout.decode("utf8", "replace"))
        self.log.debug("Resolved %s %s in %.3fs", repo_url, ref, time.monotonic() - started)
        commit = gitref.pick_commit(refs, ref)
        if commit or allow_empty:
            return commit  # allow_empty: only reachability was asked
        if not refs:
            if ref == "HEAD":
                raise SpecError(f"The repository at {repo_url} has no commits yet.", 404)
            raise SpecError(
                f"The repository at {repo_url} is empty or has no branch or tag named {ref}.",
                404,
            )
        if ref == "HEAD":
            raise SpecError(f"The repository at {repo_url} has no default branch.", 404)
        raise SpecError(f"The repository at {repo_url} has no branch or tag named {ref}.", 404)

    @staticmethod
    def _classify_git_error(repo_url, error):
        lowered = error.lower()
        if any(
            s in lowered
            for s in (
                "not found",
                "could not read username",
                "authentication failed",
                "terminal prompts disabled",
                "the requested url returned error: 401",
                "the requested url returned error: 403",
                "the requested url returned error: 404",
            )
        ):
            return SpecError(
                f"Could not access the repository at {repo_url}: "
                "it does not exist, or it is private.",
                404,
            )
        if "could not resolve host" in lowered:
            return SpecError("The repository host could not be found.", 404)
        if "redirect" in lowered or "the requested url returned error: 3" in lowered:
            return SpecError(
                f"The repository at {repo_url} redirects elsewhere; use the repository's current URL.",
                404,
            )
        if "timed out" in lowered:
            return SpecError(
                f"Timed out contacting the repository at {repo_url}. Try again in a minute.", 408
            )
        return SpecError(
            f"Could not read the repository at {repo_url}. Check the link and try again.", 404
        )
