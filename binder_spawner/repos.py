"""Launch specs: parse, validate and resolve the repository a stranger's link names.

:meth:`RepoPolicy.parse` turns every form a Binder link takes into a
:class:`LaunchSpec` (pure, no network): a provider spec (``gh/org/repo/ref``),
a web URL (``https://github.com/org/repo/tree/main``), or the hub's query form
(``{"repo": ..., "ref": ..., "urlpath": ...}``, the legacy ``labpath`` and
``filepath`` mapped as mybinder does). It refuses, with one sentence and a 4xx
status, anything the policy does not allow: providers, banned or not allowed
specs, schemes, credentials in URLs, hosts that are (or spell) loopback,
private, link-local, multicast or reserved addresses, and refs git would not
accept or that could be read as options.

:meth:`RepoPolicy.resolve` finds the commit a ref points to with ``git
ls-remote`` (see :mod:`binder_spawner.gitref` for the hardened command line),
after resolving the host once, checking every address it has, and pinning git
to those addresses. Results are cached briefly, misses too, and concurrent
resolutions of the same (repository, ref) share one ``git`` call.
"""

import asyncio
import dataclasses
import ipaddress
import os
import re
import signal
import socket
import time
from collections import OrderedDict
from urllib.parse import parse_qs, quote, urlsplit

from traitlets import (
    Bool,
    Dict,
    Float,
    Instance,
    Integer,
    List,
    Set,
    Unicode,
    default,
    validate,
)
from traitlets.config import LoggingConfigurable

from . import gitref, netcheck
from .providers import DEFAULT_PROVIDER_URLS, PROVIDERS, RepoRef, SpecError

__all__ = ["LaunchSpec", "RepoPolicy", "ResolveCache", "SpecError"]

#: Longest repository link accepted, in characters.
MAX_INPUT_LENGTH = 2048
#: Longest ``urlpath`` accepted, in characters.
MAX_URLPATH_LENGTH = 1024
# What JavaScript's encodeURI leaves alone (mybinder encodes labpath/filepath with it).
_ENCODE_URI_SAFE = ";,/?:@&=+$-_.!~*'()#"
_URLPATH_SAFE = "/?&=%#:@!$'()*+,;~-._"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_LAUNCH_KEYS = ("urlpath", "labpath", "filepath")


@dataclasses.dataclass
class LaunchSpec:
    """What a launch link names: a repository, a ref, where to open, and the commit once known."""

    #: "gh", "gl", "git" or "gist"
    provider: str
    #: normalised provider spec, e.g. "gh/org/repo/main"
    spec: str
    #: what git clones
    repo_url: str
    #: the ref as given (a branch, tag, "HEAD" or a full SHA)
    ref: str
    #: path to open in the server ("" for the default)
    urlpath: str = ""
    #: full commit SHA, once resolved (or given)
    commit: str | None = None
    #: BinderHub's build slug (image names derive from it)
    build_slug: str = dataclasses.field(default="", repr=False)
    #: identity for per-repository limits, see :attr:`repo_key`
    key: str = dataclasses.field(default="", repr=False)

    def __post_init__(self):
        # A LaunchSpec built by hand (e.g. from saved state) gets its derived fields.
        if (not self.build_slug or not self.key) and self.spec:
            name, _, rest = self.spec.partition("/")
            provider = PROVIDERS.get(name)
            if provider is not None:
                try:
                    repo = provider.from_spec(rest, DEFAULT_PROVIDER_URLS.get(name, ""))
                except SpecError:
                    return
                self.build_slug = self.build_slug or repo.build_slug
                if not self.key:
                    self.key = repo.key if name != "git" else _git_key(repo.repo_url)

    @property
    def repo_key(self):
        """The normalised spec without the ref, e.g. ``gh/org/repo``.

        Lower-cased where the provider ignores case (GitHub, GitLab, gists), and
        without a trailing ``.git`` for plain git URLs, so one repository
        counts once against its limit however the link spells it.
        """
        return self.key

    def as_dict(self):
        return {
            "provider": self.provider,
            "spec": self.spec,
            "repo_url": self.repo_url,
            "ref": self.ref,
            "commit": self.commit,
            "urlpath": self.urlpath,
            "repo_key": self.repo_key,
        }


def _git_key(url):
    return PROVIDERS["git"].make(url, "").key


def _first(value, name):
    """A single string from a query/form value (tornado gives lists of bytes or str)."""
    if isinstance(value, list | tuple):
        if len(value) != 1:
            raise SpecError(f"Give exactly one value for {name}.")
        value = value[0]
    if isinstance(value, bytes):
        try:
            value = value.decode("utf8")
        except UnicodeDecodeError:
            raise SpecError(f"The {name} is not valid UTF-8.") from None
    if not isinstance(value, str):
        raise SpecError(f"The {name} must be a string.")
    return value


def _pin_address(address):
    return f"[{address}]" if ":" in address else address


class RepoPolicy(LoggingConfigurable):
    """Which repositories may be launched, and how their refs are resolved."""

    allowed_providers = Set(
        Unicode(),
        default_value={"gh", "gl", "git", "gist"},
        help="""
        Provider prefixes users may launch from: ``gh`` (GitHub), ``gl``
        (GitLab), ``git`` (any git URL), ``gist`` (GitHub gists). Default: all four.

        Example: ``c.RepoPolicy.allowed_providers = {"gh", "gl"}``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    banned_specs = List(
        Unicode(),
        help="""
        Regular expressions of specs that may not be launched, matched (from
        the start, ignoring case, as BinderHub does) against both the whole
        normalised spec (``gh/org/repo/ref``) and the spec without the provider
        (``org/repo/ref``), so BinderHub's ``banned_specs`` work unchanged.
        Default: none.

        Example: ``c.RepoPolicy.banned_specs = ["^org/secret-repo.*", "^gl/"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    allowed_specs = List(
        Unicode(),
        help="""
        If not empty, only specs matching one of these regular expressions
        may be launched (matched like :attr:`banned_specs`; a banned spec stays
        banned). Default: empty, everything not banned is allowed.

        Example: ``c.RepoPolicy.allowed_specs = ["^gh/my-org/"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    spec_config = List(
        Dict(),
        help="""
        Per-spec settings: a list of ``{"pattern": REGEX, "config": {...}}``;
        :meth:`config_for` merges the ``config`` of every pattern that matches a
        spec (later entries win). Other components read their per-repository
        overrides (limits, resources) from it. Default: empty.

        Example: ``c.RepoPolicy.spec_config = [{"pattern": "^gh/my-org/", "config": {"quota": 200}}]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    allow_http = Bool(
        False,
        help="""
        Accept ``http://`` repository URLs as well as ``https://``. Default False:
        plain HTTP lets anyone on the path change the code that is run.

        Example: ``c.RepoPolicy.allow_http = True``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    allowed_hosts = List(
        Unicode(),
        help="""
        Hosts (``name`` or ``name:port``, IPv6 in brackets) that may be contacted
        even though they are, or resolve to, loopback, private or otherwise
        non-public addresses: an internal GitLab, or a test server. The hosts
        of :attr:`provider_urls` are trusted the same way. Default: none.

        Example: ``c.RepoPolicy.allowed_hosts = ["git.internal.example.org", "127.0.0.1:8080"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    banned_networks = List(
        Unicode(),
        help="""
        Extra networks (CIDR) repository hosts must not resolve to, on top of
        the always-refused loopback, private, link-local, multicast and reserved
        ranges: e.g. the public addresses of your own cluster. Default: none.

        Example: ``c.RepoPolicy.banned_networks = ["203.0.113.0/24"]``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("banned_networks")
    def _validate_banned_networks(self, proposal):
        try:
            netcheck.parse_networks(proposal.value)
        except ValueError as e:
            raise ValueError(f"RepoPolicy.banned_networks: {e}") from None
        return proposal.value

    provider_urls = Dict(
        Unicode(),
        help="""
        Base URL of each hosted provider, for GitHub Enterprise or a
        self-hosted GitLab: ``{"gh": URL, "gl": URL, "gist": URL}``; missing
        keys keep their defaults (``https://github.com``, ``https://gitlab.com``,
        ``https://gist.github.com``). Links to these hosts are read as that
        provider's links. Admin-configured hosts are exempt from the
        private-address check.

        Example: ``c.RepoPolicy.provider_urls = {"gl": "https://gitlab.example.org"}``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

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
        "binder_spawner.repos.ResolveCache",
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
        return ResolveCache.shared()

    git_executable = Unicode(
        "git",
        help="""
        The git program to run. Default ``git`` (from ``PATH``); git >= 2.37
        is needed for address pinning (``http.curloptResolve``).

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._table_cache = None
        #: monotonic clock; tests replace it to move time
        self.clock = time.monotonic

    # --- configuration helpers ---------------------------------------------

    @validate("banned_specs", "allowed_specs")
    def _validate_patterns(self, proposal):
        for pattern in proposal.value:
            try:
                re.compile(pattern)
            except re.error as e:
                raise ValueError(
                    f"RepoPolicy.{proposal.trait.name}: bad regular expression {pattern!r}: {e}"
                ) from None
        return proposal.value

    @default("provider_urls")
    def _default_provider_urls(self):
        return {}

    def _tables(self):
        """Derived lookup tables, rebuilt only when the settings they come from change."""
        key = (
            tuple(self.allowed_hosts),
            tuple(sorted(self.provider_urls.items())),
            tuple(self.banned_networks),
        )
        if self._table_cache is not None and self._table_cache[0] == key:
            return self._table_cache[1]
        urls = dict(DEFAULT_PROVIDER_URLS)
        urls.update({k: v.rstrip("/") for k, v in self.provider_urls.items()})
        provider_hosts = {}
        trusted = set()
        for entry in self.allowed_hosts:
            trusted.add(self._split_hostport(entry.strip().lower()))
        for name, url in urls.items():
            parts = urlsplit(url)
            if parts.hostname:
                hostport = (
                    netcheck.normalise_host(parts.hostname),
                    parts.port or (443 if parts.scheme == "https" else 80),
                )
                if name in self.provider_urls:
                    trusted.add(hostport)  # the admin's own host, e.g. an internal GitLab
                provider_hosts.setdefault(hostport, []).append(name)
        tables = _Tables(
            provider_urls=urls,
            provider_hosts=provider_hosts,
            trusted=frozenset(trusted),
            banned_networks=netcheck.parse_networks(self.banned_networks),
        )
        self._table_cache = (key, tables)
        return tables

    def _provider_urls(self):
        return self._tables().provider_urls

    @staticmethod
    def _split_hostport(entry):
        if entry.startswith("["):
            host, _, rest = entry[1:].partition("]")
            port = rest[1:] if rest.startswith(":") else ""
        elif entry.count(":") == 1:
            host, _, port = entry.partition(":")
        else:
            host, port = entry, ""
        try:
            host = netcheck.normalise_host(host)
        except netcheck.HostError:
            pass
        return host, int(port) if port.isdigit() else None

    def _is_trusted(self, host, port):
        trusted = self._tables().trusted
        return (host, port) in trusted or (host, None) in trusted

    def config_for(self, spec):
        """Merged :attr:`spec_config` entries whose pattern matches ``spec`` (a LaunchSpec or str)."""
        text = spec.spec if isinstance(spec, LaunchSpec) else spec
        merged = {}
        for entry in self.spec_config:
            if re.match(entry.get("pattern", "(?!)"), text, re.IGNORECASE):
                merged.update(entry.get("config", {}))
        return merged

    # --- parsing -------------------------------------------------------------

    def parse(self, value):
        """A :class:`LaunchSpec` from a link, spec or query dict; raises :class:`SpecError`."""
        launch = {}
        ref = None
        if isinstance(value, dict):
            if "repo" not in value:
                raise SpecError("No repository given: add repo=<repository URL> to the link.")
            text = _first(value["repo"], "repository")
            if value.get("ref") not in (None, "", [], [""], [b""]):
                ref = _first(value["ref"], "ref")
            for key in _LAUNCH_KEYS:
                if value.get(key) is not None:
                    launch[key] = _first(value[key], key)
        elif isinstance(value, str):
            text = value
        else:
            raise SpecError("The repository must be given as text.")
        text = text.strip()
        if not text:
            raise SpecError("No repository given.")
        if len(text) > MAX_INPUT_LENGTH or (ref and len(ref) > MAX_INPUT_LENGTH):
            raise SpecError("The repository link is too long.")
        if _CONTROL.search(text):
            raise SpecError("The repository link contains control characters.")

        repo, query = self._read_repo(text)
        for key in _LAUNCH_KEYS:  # explicit values win over the link's own query
            if key not in launch and key in query:
                launch[key] = query[key]
        if ref is None and query.get("ref"):
            ref = query["ref"]
        if ref is not None:
            repo = self._with_ref(repo, ref.strip())
        problem = gitref.ref_problem(repo.ref)
        if problem:
            raise SpecError(problem)
        if repo.provider not in self.allowed_providers:
            raise SpecError(
                f"Launching from {PROVIDERS[repo.provider].display_name} is not enabled on this hub.",
                403,
            )
        self._check_spec_allowed(repo)
        commit = repo.ref if gitref.is_full_sha(repo.ref) else None
        return LaunchSpec(
            provider=repo.provider,
            spec=repo.spec,
            repo_url=repo.repo_url,
            ref=repo.ref,
            urlpath=self._urlpath(launch),
            commit=commit,
            build_slug=repo.build_slug,
            key=repo.key,
        )

    def _normalised(self, repo):
        """Full SHAs lower-cased; otherwise the provider's reading, spec spelling kept."""
        ref = gitref.normalise_ref(repo.ref)
        return repo if ref == repo.ref else self._with_ref(repo, ref)

    def _with_ref(self, repo, ref):
        ref = gitref.normalise_ref(ref)
        if repo.provider == "gist":
            user, gist_id = repo.repo.split("/")
            return PROVIDERS["gist"].make(user, gist_id, ref, self._provider_urls()["gist"])
        spec_ref = quote(ref, safe="/") if repo.provider in ("gl", "git") else ref
        return dataclasses.replace(repo, ref=ref or "HEAD", spec_ref=spec_ref or "HEAD")

    def _read_repo(self, text):
        """(RepoRef, launch parameters found in the link's own query string)."""
        if text.startswith("v2/"):
            text = text[len("v2/") :]
        prefix = text.split("/", 1)[0]
        if prefix in PROVIDERS and "/" in text:
            text, _, query_string = text.partition("?")
            query = self._query(query_string)
            rest = text[len(prefix) + 1 :]
            if prefix == "git":
                repo = PROVIDERS["git"].from_spec(rest, "")
                url, _ = self._check_url(repo.repo_url)
                return PROVIDERS["git"].make(url, repo.ref), query
            repo = PROVIDERS[prefix].from_spec(rest, self._provider_urls()[prefix])
            return self._normalised(repo), query
        if "://" not in text:
            if text.startswith("git@") or re.match(r"^[\w.-]+@[\w.-]+:", text):
                raise SpecError("SSH repository URLs are not accepted: use the https:// URL.")
            first = text.split("/", 1)[0]
            if "." in first and "/" in text and not text.startswith((".", "/")):
                text = "https://" + text  # "github.com/org/repo"
            else:
                raise SpecError(
                    "This is not a repository URL or a provider spec like gh/<user>/<repo>/<ref>."
                )
        url, parts = self._check_url(text)
        query = self._query(parts.query)
        tables = self._tables()
        for name in tables.provider_hosts.get((parts.host, parts.port), ()):
            if name in self.allowed_providers and name in PROVIDERS:
                repo = PROVIDERS[name].from_url(parts.path, tables.provider_urls[name])
                return self._normalised(repo), query
        return PROVIDERS["git"].make(url, ""), query

    @staticmethod
    def _query(query_string):
        query = {}
        for key, values in parse_qs(query_string, keep_blank_values=True).items():
            if key in (*_LAUNCH_KEYS, "ref") and values:
                query[key] = values[-1]
        return query

    def _check_url(self, text):
        """Check a repository URL offline; returns (normalised URL without query, parts)."""
        if _CONTROL.search(text) or " " in text or "\\" in text:
            # urlsplit would silently drop tabs and newlines: refuse instead
            raise SpecError("The repository URL contains characters that are not allowed.")
        try:
            parts = urlsplit(text)
            port = parts.port
        except ValueError:
            raise SpecError("The repository URL is not valid.") from None
        scheme = parts.scheme.lower()
        allowed = ("https", "http") if self.allow_http else ("https",)
        if scheme not in allowed:
            if scheme == "http":
                raise SpecError("Only https:// repository URLs are accepted on this hub.")
            raise SpecError(
                "Only https:// repository URLs are accepted, not file:, ssh: or other schemes."
            )
        if "@" in parts.netloc:
            raise SpecError("Repository URLs must not contain a user name or password.")
        raw_host = parts.netloc.rsplit(":", 1)[0] if port is not None else parts.netloc
        try:
            host = netcheck.normalise_host(raw_host.strip("[]"))
        except netcheck.HostError as e:
            raise SpecError(str(e)) from None
        default_port = 443 if scheme == "https" else 80
        port = port or default_port
        self._check_host_offline(host, port)
        path = parts.path
        if not path.strip("/"):
            raise SpecError("The repository URL has no path to a repository.")
        if _CONTROL.search(path) or " " in path or "\\" in path:
            raise SpecError("The repository URL contains characters that are not allowed.")
        netloc = f"[{host}]" if ":" in host else host
        if port != default_port:
            netloc += f":{port}"
        url = f"{scheme}://{netloc}{path}"
        return url, _UrlParts(scheme=scheme, host=host, port=port, path=path, query=parts.query)

    def _check_host_offline(self, host, port):
        """Refuse hosts that are known to be local without asking DNS."""
        if self._is_trusted(host, port):
            return
        if netcheck.is_local_name(host):
            raise SpecError(
                f"The repository host {host} is this machine, which is not allowed.", 403
            )
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        problem = netcheck.address_problem(ip, self._banned_networks())
        if problem:
            raise SpecError(
                f"The repository host {host} is {problem}; only public hosts are allowed.", 403
            )

    def _banned_networks(self):
        return self._tables().banned_networks

    def _check_spec_allowed(self, repo):
        candidates = (repo.spec, f"{repo.repo}/{repo.spec_ref}")
        for pattern in self.banned_specs:
            if any(re.match(pattern, c, re.IGNORECASE) for c in candidates):
                raise SpecError("This repository is not allowed on this hub.", 403)
        if self.allowed_specs and not any(
            re.match(pattern, c, re.IGNORECASE)
            for pattern in self.allowed_specs
            for c in candidates
        ):
            raise SpecError("This repository is not allowed on this hub.", 403)

    def _urlpath(self, launch):
        if launch.get("labpath") is not None:
            urlpath = "doc/tree/" + quote(launch["labpath"].rstrip("/"), safe=_ENCODE_URI_SAFE)
        elif launch.get("filepath") is not None:
            urlpath = "tree/" + quote(launch["filepath"].rstrip("/"), safe=_ENCODE_URI_SAFE)
        else:
            urlpath = launch.get("urlpath") or ""
        urlpath = urlpath.strip().lstrip("/")
        if len(urlpath) > MAX_URLPATH_LENGTH:
            raise SpecError("The urlpath is too long.")
        if _CONTROL.search(urlpath) or "\\" in urlpath:
            raise SpecError("The urlpath contains characters that are not allowed.")
        path_only = urlpath.split("?", 1)[0].split("#", 1)[0]
        if ".." in path_only.split("/") or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", urlpath):
            raise SpecError(
                "The urlpath must be a path inside the server, like lab or tree/a.ipynb."
            )
        return quote(urlpath, safe=_URLPATH_SAFE)

    # --- resolution ----------------------------------------------------------

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

    def _fingerprint(self):
        """The settings a resolution result depends on (part of every cache key)."""
        return (
            self.allow_http,
            tuple(sorted(self.allowed_hosts)),
            tuple(self.banned_networks),
            tuple(sorted(self.provider_urls.items())),
            self.git_executable,
        )

    async def _cached_lookup(self, repo_url, ref, allow_empty=False):
        cache = self.resolve_cache
        key = (self._fingerprint(), repo_url, ref, allow_empty)
        hit = cache.entries.get(key)
        if hit is not None:
            stored_at, result = hit
            ttl = (
                self.resolve_negative_cache_ttl
                if isinstance(result, SpecError)
                else self.resolve_cache_ttl
            )
            if 0 <= self.clock() - stored_at < ttl:
                cache.entries.move_to_end(key)
                if isinstance(result, SpecError):
                    raise SpecError(result.message, result.status_code)
                return result
            del cache.entries[key]
        task = cache.inflight.get(key)
        if task is None:
            task = asyncio.ensure_future(self._lookup_and_store(key, repo_url, ref, allow_empty))
            cache.inflight[key] = task
            task.add_done_callback(lambda _: cache.inflight.pop(key, None))
        result = await asyncio.shield(task)
        if isinstance(result, SpecError):
            raise SpecError(result.message, result.status_code)
        return result

    async def _lookup_and_store(self, key, repo_url, ref, allow_empty):
        try:
            result = await self._ls_remote(repo_url, ref, allow_empty)
            ttl = self.resolve_cache_ttl
        except SpecError as e:
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

    def _schemes(self):
        return ("https", "http") if self.allow_http else ("https",)

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
                proc.communicate(), max(0.1, deadline - time.monotonic())
            )
        except asyncio.TimeoutError:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            await proc.wait()
            self.log.warning("git ls-remote %s timed out after %ss", repo_url, self.git_timeout)
            raise SpecError(
                f"Timed out contacting the repository at {repo_url}. Try again in a minute.", 408
            ) from None
        error = stderr.decode("utf8", "replace")
        if proc.returncode:
            self.log.info("git ls-remote %s failed: %s", repo_url, error.strip()[-500:])
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


class ResolveCache:
    """Resolved (repository, ref) results and in-flight resolutions.

    One process-wide instance (:meth:`shared`) is the default for every
    :class:`RepoPolicy`: JupyterHub makes one spawner, hence one policy, per
    user, and the cache is only useful across users. Bounded by
    :attr:`RepoPolicy.resolve_cache_size`.
    """

    _shared = None

    def __init__(self):
        #: key -> (stored at, commit or SpecError), oldest first
        self.entries = OrderedDict()
        #: key -> asyncio task of the resolution in flight
        self.inflight = {}

    @classmethod
    def shared(cls):
        if cls._shared is None:
            cls._shared = cls()
        return cls._shared

    def clear(self):
        self.entries.clear()
        self.inflight.clear()


@dataclasses.dataclass(frozen=True)
class _Tables:
    provider_urls: dict
    #: (host, port) -> provider names whose web links live there
    provider_hosts: dict
    #: (host, port or None) exempt from the address checks
    trusted: frozenset
    banned_networks: list


@dataclasses.dataclass(frozen=True)
class _UrlParts:
    scheme: str
    host: str
    port: int
    path: str
    query: str


__all__ += ["RepoRef"]
