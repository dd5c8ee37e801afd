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

import dataclasses
import ipaddress
import re
from urllib.parse import parse_qs, quote, unquote, urlsplit

from traitlets import (
    Bool,
    Dict,
    List,
    Set,
    Unicode,
    default,
    validate,
)

from . import gitref, netcheck
from .archivepolicy import ArchivePolicy
from .archives import ARCHIVE_PROVIDERS, ArchiveError, bare_doi, is_archive, provider_for_doi
from .providers import DEFAULT_PROVIDER_URLS, PROVIDERS, RepoRef, SpecError
from .querydata import first_value
from .resolver import RefResolver, ResolveCache

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
# More rounds of percent-decoding than any server in front of a notebook applies.
_DECODE_ROUNDS = 4
URLPATH_HINT = "The urlpath must be a path inside the server, like lab or tree/a.ipynb."


def _path_part(url):
    return url.split("?", 1)[0].split("#", 1)[0]


def urlpath_problem(urlpath):
    """Why ``urlpath`` could lead out of the server's prefix, as a sentence, or ``""``.

    The server's ``default_url`` is ``/<urlpath>`` below ``/user/<name>/``. A
    browser resolves ``.`` and ``..`` segments, percent-encoded ones too
    (``%2e%2e`` is a double-dot segment in the WHATWG URL standard), and
    servers decode escapes before they route or redirect, some twice. So the
    path part is decoded until it stops changing (``%252e`` too; ``%2f``
    becomes a separator, ``%3f`` ends the path), and then may hold no dot
    segment, backslash or control character. Query and fragment are not
    paths and are not checked.
    """
    path = _path_part(urlpath)
    for _ in range(_DECODE_ROUNDS):
        # a decoded "?" or "#" ends the path for whoever reads the decoded URL
        decoded = _path_part(unquote(path))
        if decoded == path:
            break
        path = decoded
    else:
        return "The urlpath is percent-encoded too many times over; give a plain path like lab."
    if _CONTROL.search(path) or "\\" in path:
        return "The urlpath contains characters that are not allowed."
    if any(segment in (".", "..") for segment in path.split("/")):
        return (
            "The urlpath must be a path inside the server, like lab or tree/a.ipynb, "
            "without dot segments (also not percent-encoded)."
        )
    return ""


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
    #: archives: the spec of exactly the resolved version (BinderHub's resolved spec)
    resolved_spec: str = dataclasses.field(default="", repr=False)
    #: archives: the resolved version's page (``BINDER_REF_URL``)
    ref_url: str = dataclasses.field(default="", repr=False)
    #: archives: the :class:`~binder_spawner.archives.Resolution`, once resolved
    resolution: object = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def is_archive(self):
        """True for a record in a research archive (Zenodo, Figshare), not a git repository."""
        return is_archive(self.provider)

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


_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def _normalise_path(path):
    """A URL path in RFC 3986 normal form: unreserved escapes decoded, dot segments removed.

    ``/org/../org/repo``, ``/org/./repo`` and ``/org/%72epo`` are ``/org/repo``
    (curl, which git uses, removes dot segments itself): one repository has
    one spelling, hence one limit key and one image.
    """

    def unescape(match):
        char = chr(int(match[1], 16))
        return char if char in _UNRESERVED else match[0].upper()

    segments = _ESCAPE.sub(unescape, path).split("/")
    out = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment in (".", ".."):
            if segment == ".." and len(out) > 1:
                out.pop()
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/".join(out)


def _git_key(url):
    return PROVIDERS["git"].make(url, "").key


def _first(value, name):
    """One string from a query/form value, or :class:`SpecError` naming ``name``."""
    try:
        return first_value(value, name)
    except ValueError as e:
        raise SpecError(str(e)) from None


class RepoPolicy(ArchivePolicy, RefResolver):
    """Which repositories may be launched, and how their refs are resolved."""

    allowed_providers = Set(
        Unicode(),
        default_value={
            "gh",
            "gl",
            "git",
            "gist",
            "zenodo",
            "figshare",
            "dataverse",
            "hydroshare",
            "ckan",
        },
        help="""
        Provider prefixes users may launch from: ``gh`` (GitHub), ``gl``
        (GitLab), ``git`` (any git URL), ``gist`` (GitHub gists), ``zenodo``,
        ``figshare``, ``dataverse`` (records in those archives, by DOI),
        ``hydroshare`` (resources, by id), ``ckan`` (datasets, by URL) and
        ``swhid`` (Software Heritage identifiers, ``swh:1:dir:...`` or
        ``swh:1:rev:...``). Default: all but ``swhid``, as on mybinder.org.

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

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._table_cache = None

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
        if is_archive(repo.provider):
            return self._archive_spec(repo, ref, launch)
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
        hosted = self._hosted_equivalent(repo)
        key = hosted.key if hosted is not None else repo.key
        commit = repo.ref if gitref.is_full_sha(repo.ref) else None
        return LaunchSpec(
            provider=repo.provider,
            spec=repo.spec,
            repo_url=repo.repo_url,
            ref=repo.ref,
            urlpath=self._urlpath(launch),
            commit=commit,
            build_slug=repo.build_slug,
            key=key,
        )

    def _archive_spec(self, repo, ref, launch):
        if ref is not None and ref.strip() not in ("", "HEAD"):
            raise SpecError(
                "A record in an archive has no branches or tags: launch it without a ref."
            )
        provider = ARCHIVE_PROVIDERS[repo.provider]
        if repo.provider not in self.allowed_providers:
            raise SpecError(
                f"Launching from {provider.display_name} is not enabled on this hub.", 403
            )
        self._check_spec_allowed(repo)
        return LaunchSpec(
            provider=repo.provider,
            spec=repo.spec,
            repo_url=repo.repo_url,
            ref="",
            urlpath=self._urlpath(launch),
            key=repo.key,
        )

    def _read_archive(self, text):
        """(ArchiveRef, query) if ``text`` is a DOI in any spelling, else None."""
        doi_text, _, query_string = text.partition("?")
        if doi_text.startswith("swh:"):
            return ARCHIVE_PROVIDERS["swhid"].from_spec(doi_text), self._query(query_string)
        doi = bare_doi(doi_text)
        if doi is None:
            return None
        name = provider_for_doi(doi)
        if name is None:
            raise SpecError(
                f"The DOI {doi} is not one this hub knows how to launch: give it as "
                + " or ".join(f'"{n}/<DOI>"' for n in ARCHIVE_PROVIDERS)
                + "."
            )
        return ARCHIVE_PROVIDERS[name].from_spec(doi, ""), self._query(query_string)

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
        if prefix in ARCHIVE_PROVIDERS and "/" in text:
            text, _, query_string = text.partition("?")
            repo = ARCHIVE_PROVIDERS[prefix].from_spec(text[len(prefix) + 1 :])
            if prefix == "ckan":
                try:  # a dataset URL is a stranger's URL: the network rules, offline
                    self.check_ckan_url(repo.repo_url)
                except ArchiveError as e:
                    raise SpecError(e.message, 403) from None
            return repo, self._query(query_string)
        archived = self._read_archive(text)
        if archived is not None:
            return archived
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
                archived = self._read_archive(text)
                if archived is not None:
                    return archived
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
        archive = self.archive_provider_for_host(parts.host, parts.port)
        if archive is not None:
            provider = ARCHIVE_PROVIDERS[archive]
            return provider.from_record_url(parts.host, parts.path, parts.query), query
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
        path = _normalise_path(parts.path)
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

    def _hosted_equivalent(self, repo):
        """The hosted-provider reading of a ``git`` URL on a provider's host, or None.

        ``git/https%3A%2F%2Fgithub.com%2Forg%2Frepo/main`` is ``gh/org/repo/main``:
        bans, allow-lists and per-repository limits must not be dodged by
        spelling a GitHub repository as a plain git URL.
        """
        if repo.provider != "git":
            return None
        parts = urlsplit(repo.repo_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        tables = self._tables()
        for name in tables.provider_hosts.get((parts.hostname, port), ()):
            if name not in PROVIDERS or name == "git":
                continue
            try:
                hosted = PROVIDERS[name].from_url(parts.path, tables.provider_urls[name])
            except SpecError:
                continue
            try:
                return self._with_ref(hosted, repo.ref)
            except SpecError:
                return None
        return None

    def _check_spec_allowed(self, repo):
        candidates = [repo.spec, f"{repo.repo}/{repo.spec_ref}" if repo.spec_ref else repo.repo]
        hosted = self._hosted_equivalent(repo)
        if hosted is not None:
            candidates += [hosted.spec, f"{hosted.repo}/{hosted.spec_ref}"]
        for pattern in self.banned_specs:
            if any(re.match(pattern, c, re.IGNORECASE) for c in candidates):
                raise SpecError("This repository is not allowed on this hub.", 403)
        if self.allowed_specs and not any(
            re.match(pattern, c, re.IGNORECASE)
            for pattern in self.allowed_specs
            for c in candidates
        ):
            raise SpecError("This repository is not allowed on this hub.", 403)

    # --- hooks for RefResolver ---------------------------------------------

    def _fingerprint(self):
        """The settings a resolution result depends on (part of every cache key)."""
        return (
            self.allow_http,
            tuple(sorted(self.allowed_hosts)),
            tuple(self.banned_networks),
            tuple(sorted(self.provider_urls.items())),
            self.git_executable,
            self.doi_resolver_url,
            self.figshare_api_url,
            tuple(sorted((k, tuple(v)) for k, v in self.archive_hosts.items())),
        )

    # --- resolution -------------------------------------------------------------

    async def resolve(self, spec):
        """A copy of ``spec`` with ``commit`` set: a git commit, or an archive record's version.

        For an archive the version is BinderHub's resolved ref (the image
        tag); ``build_slug``, ``resolved_spec``, ``ref_url`` and ``resolution``
        are set too. Raises :class:`SpecError` with one sentence.
        """
        if not is_archive(spec.provider):
            return await super().resolve(spec)
        try:
            resolution = await self.resolve_archive(spec)
        except ArchiveError as e:
            raise SpecError(e.message, e.status_code) from None
        return dataclasses.replace(
            spec,
            commit=resolution.version,
            build_slug=resolution.build_slug,
            resolved_spec=resolution.resolved_spec,
            ref_url=resolution.ref_url,
            resolution=resolution,
        )

    def check_fetch_url(self, url):
        """Offline checks of a URL the hub is about to fetch from an archive; ``(host, port)``.

        The rules of repository URLs: the scheme (``https``, or ``http`` with
        :attr:`allow_http`), no credentials, no host that is or spells a
        loopback, private or reserved address unless in :attr:`allowed_hosts`.
        Raises :class:`~binder_spawner.archives.ArchiveError`.
        """
        if _CONTROL.search(url) or " " in url or "\\" in url:
            raise ArchiveError("The archive gave a URL with characters that are not allowed.", 502)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError:
            raise ArchiveError("The archive gave a URL that is not valid.", 502) from None
        scheme = parts.scheme.lower()
        if scheme not in self._schemes():
            raise ArchiveError(
                f"The archive sent this hub to a {scheme or 'relative'} URL; only "
                + " and ".join(f"{s}://" for s in self._schemes())
                + " URLs are followed.",
                502,
            )
        if "@" in parts.netloc:
            raise ArchiveError("The archive gave a URL with a user name or password.", 502)
        try:
            host = netcheck.normalise_host((parts.hostname or "").strip("[]"))
        except netcheck.HostError as e:
            raise ArchiveError(str(e), 502) from None
        port = port or (443 if scheme == "https" else 80)
        try:
            self._check_host_offline(host, port)
        except SpecError as e:
            raise ArchiveError(e.message.replace("repository host", "archive host"), 403) from None
        return host, port

    def _schemes(self):
        return ("https", "http") if self.allow_http else ("https",)

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
        if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", urlpath):
            raise SpecError(URLPATH_HINT)
        problem = urlpath_problem(urlpath)
        if problem:
            raise SpecError(problem)
        return quote(urlpath, safe=_URLPATH_SAFE)


def binderhub_provider_name(provider):
    """BinderHub's name of a provider in launch events and metrics (``gh`` -> ``GitHub``).

    The names of BinderHub's ``event-schemas/launch.json`` (b9fad99); unknown: ``other``.
    """
    known = PROVIDERS.get(provider) or ARCHIVE_PROVIDERS.get(provider)
    return known.binderhub_name if known is not None else "other"


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
