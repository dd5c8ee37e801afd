"""Repository providers: from a provider spec or a URL to a repository (pure).

The table :data:`PROVIDERS` maps the mybinder provider prefixes (``gh``,
``gl``, ``git``, ``gist``) to small classes that read the provider's spec
syntax and its web URLs, and know the repository URL git clones and the
*build slug* BinderHub derives image names from. The rules follow BinderHub's
``binderhub/repoproviders.py`` (2026-04, b9fad99) so that the same spec gives
the same image name:

- ``gh/<user>/<repo>/<ref>``: the ref may contain ``/``; a trailing ``.git``
  is dropped from the repo name; slug ``<user>-<repo>``. Names are
  lower-cased where the host ignores case (GitHub, GitLab, gists), so every
  spelling of one repository gives BinderHub's image name for the
  lower-case spelling. The spec keeps the
  ref's percent-encoding, the ref is resolved URL-decoded (as GitHub's API does).
- ``gl/<url-encoded namespace>/<ref>``: slug is the namespace with ``-``
  doubled as ``_-`` and ``/`` turned into ``-``; the ref is URL-decoded.
- ``git/<url-encoded URL>/<ref>``: slug is the URL without a trailing ``/``
  or ``.git``; the ref is URL-decoded.
- ``gist/<user>/<gist id>[/<revision>]``: slug is the gist id.

Unlike BinderHub a missing ref means ``HEAD``. A provider for a DOI archive
(Zenodo, Figshare, ...) is one more subclass of :class:`Provider` with its
own ``from_spec``/``from_url`` and an entry in :data:`PROVIDERS`.
"""

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote


class SpecError(Exception):
    """A launch link that is refused: ``message`` is one user-facing sentence.

    ``status_code`` is the HTTP status to answer with (4xx).
    """

    def __init__(self, message, status_code=400):
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __str__(self):
        return self.message


@dataclass(frozen=True)
class RepoRef:
    """A repository and an unresolved ref, as one provider understood them."""

    provider: str
    #: the provider part of the normalised spec without the ref ("org/repo")
    repo: str
    ref: str
    repo_url: str
    build_slug: str
    #: identity for per-repository limits: case-folded where the host ignores case
    key: str
    #: how the ref is written into the spec (gl/git specs URL-encode it)
    spec_ref: str

    @property
    def spec(self):
        return f"{self.provider}/{self.repo}/{self.spec_ref}"


_GH_USER = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,99})$")
_GH_REPO = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_GL_PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,254}$")
_GIST_ID = re.compile(r"^[0-9A-Za-z]{1,64}$")


def _strip_git(name):
    return name[: -len(".git")] if name.endswith(".git") else name


def _bad_repo(provider):
    return SpecError(f"This is not a valid {provider} repository name.")


class Provider:
    """One kind of repository link. Subclasses implement the two readers."""

    name = ""
    display_name = ""
    #: BinderHub's name of the provider (launch events, metrics)
    binderhub_name = ""

    def from_spec(self, rest, base_url):
        """Read ``rest`` (the spec after ``<name>/``); returns a :class:`RepoRef`."""
        raise NotImplementedError

    def from_url(self, path, base_url):
        """Read the path of a web URL on this provider's host; returns a :class:`RepoRef`."""
        raise NotImplementedError


class GitHubProvider(Provider):
    name = "gh"
    display_name = "GitHub"
    binderhub_name = "GitHub"

    def _make(self, user, repo, ref, base_url, spec_ref=None):
        repo = _strip_git(repo)
        if not _GH_USER.match(user) or not _GH_REPO.match(repo) or repo in (".", ".."):
            raise _bad_repo(self.display_name)
        # GitHub ignores case in user and repository names: one spelling, one image
        user, repo = user.lower(), repo.lower()
        return RepoRef(
            provider=self.name,
            repo=f"{user}/{repo}",
            ref=ref or "HEAD",
            repo_url=f"{base_url}/{user}/{repo}",
            build_slug=f"{user}-{repo}",
            key=f"{self.name}/{user}/{repo}".lower(),
            spec_ref=spec_ref or ref or "HEAD",
        )

    def from_spec(self, rest, base_url):
        parts = rest.split("/", 2)  # the ref may contain "/"
        if len(parts) < 2:
            raise SpecError('A GitHub spec looks like "gh/<user>/<repo>/<ref>".')
        user, repo = parts[0], parts[1]
        raw_ref = parts[2] if len(parts) == 3 else ""
        # The spec keeps the ref as written; GitHub reads it URL-decoded (BinderHub
        # passes it to the commits API, which decodes it), and so does resolution.
        return self._make(user, repo, unquote(raw_ref), base_url, spec_ref=raw_ref)

    def from_url(self, path, base_url):
        parts = [p for p in path.split("/") if p]
        if len(parts) < 2:
            raise SpecError("This GitHub link does not point to a repository.")
        user, repo, rest = parts[0], parts[1], parts[2:]
        if not rest:
            ref = ""
        elif rest[0] == "tree" and len(rest) > 1:
            ref = "/".join(unquote(p) for p in rest[1:])
        elif rest[0] == "commit" and len(rest) == 2:
            ref = rest[1]
        elif rest[:2] == ["releases", "tag"] and len(rest) > 2:
            ref = "/".join(unquote(p) for p in rest[2:])
        else:
            raise SpecError(
                "This GitHub link does not point to a repository, branch, tag or commit."
            )
        return self._make(user, repo, ref, base_url)


class GistProvider(Provider):
    name = "gist"
    display_name = "GitHub Gist"
    binderhub_name = "Gist"

    def make(self, user, gist_id, ref, base_url):
        if not _GH_USER.match(user) or not _GIST_ID.match(gist_id):
            raise _bad_repo(self.display_name)
        user, gist_id = user.lower(), gist_id.lower()
        # BinderHub: "", HEAD, master and main all mean the latest revision
        if ref in ("", "HEAD", "master", "main"):
            ref = "HEAD"
        elif not re.match(r"^[0-9a-fA-F]{40}$", ref):
            raise SpecError("A gist revision must be a full 40-character commit SHA or HEAD.")
        return RepoRef(
            provider=self.name,
            repo=f"{user}/{gist_id}",
            ref=ref.lower() if ref != "HEAD" else ref,
            repo_url=f"{base_url}/{user}/{gist_id}.git",
            build_slug=gist_id,
            key=f"{self.name}/{user}/{gist_id}".lower(),
            spec_ref=ref.lower() if ref != "HEAD" else ref,
        )

    def from_spec(self, rest, base_url):
        parts = rest.split("/")
        if len(parts) not in (2, 3):
            raise SpecError('A gist spec looks like "gist/<user>/<gist id>/<revision>".')
        return self.make(parts[0], parts[1], parts[2] if len(parts) == 3 else "", base_url)

    def from_url(self, path, base_url):
        parts = [p for p in path.split("/") if p]
        if len(parts) not in (2, 3):
            raise SpecError("This gist link does not point to a gist.")
        gist_id = _strip_git(parts[1])
        return self.make(parts[0], gist_id, parts[2] if len(parts) == 3 else "", base_url)


class GitLabProvider(Provider):
    name = "gl"
    display_name = "GitLab"
    binderhub_name = "GitLab"

    def _make(self, namespace, ref, base_url):
        parts = namespace.split("/")
        if len(parts) < 2:
            raise SpecError(
                'A GitLab spec looks like "gl/<URL-encoded namespace>/<ref>", '
                'e.g. "gl/group%2Fproject/main".'
            )
        if not all(_GL_PART.match(p) for p in parts):
            raise _bad_repo(self.display_name)
        # GitLab routes namespaces and projects ignoring case
        namespace = namespace.lower()
        parts = namespace.split("/")
        ref = ref or "HEAD"
        return RepoRef(
            provider=self.name,
            repo=quote(namespace, safe=""),
            ref=ref,
            repo_url=f"{base_url}/{namespace}.git",
            build_slug="-".join(p.replace("-", "_-") for p in parts),
            key=f"{self.name}/{quote(namespace, safe='')}".lower(),
            spec_ref=quote(ref, safe="/"),
        )

    def from_spec(self, rest, base_url):
        quoted_namespace, _, ref = rest.partition("/")
        return self._make(unquote(quoted_namespace), unquote(ref), base_url)

    def from_url(self, path, base_url):
        path = path.strip("/")
        namespace, _, rest = path.partition("/-/")
        namespace = _strip_git(unquote(namespace))
        rest = [p for p in rest.split("/") if p]
        if not rest:
            ref = ""
        elif rest[0] == "tree" and len(rest) > 1:
            ref = "/".join(unquote(p) for p in rest[1:])
        elif rest[0] == "commit" and len(rest) == 2:
            ref = rest[1]
        else:
            raise SpecError(
                "This GitLab link does not point to a repository, branch, tag or commit."
            )
        return self._make(namespace, ref, base_url)


class GitProvider(Provider):
    """Any git repository by URL. ``base_url`` is unused: the URL is the repository."""

    name = "git"
    display_name = "Git"
    binderhub_name = "Git"

    def make(self, url, ref):
        """``url`` must already be checked and normalised by the caller.

        Trailing slashes are dropped (git ignores them). The key and the build
        slug also drop a trailing ``.git``: ``https://host/org/repo`` and
        ``https://host/org/repo.git`` are one repository on every common git
        host, so they share a limit and an image (BinderHub's name for the
        spelling without ``.git``). The URL cloned keeps it, as some plain
        git servers need it.
        """
        ref = ref or "HEAD"
        url = url.rstrip("/")
        canonical = _strip_git(url)
        return RepoRef(
            provider=self.name,
            repo=quote(url, safe=""),
            ref=ref,
            repo_url=url,
            build_slug=canonical,
            key=f"{self.name}/{quote(canonical, safe='')}",
            spec_ref=quote(ref, safe="/"),
        )

    def from_spec(self, rest, base_url):
        quoted_url, _, ref = rest.partition("/")
        url = unquote(quoted_url)
        if "://" not in url:
            raise SpecError(
                'A git spec looks like "git/<URL-encoded repository URL>/<ref>", '
                'e.g. "git/https%3A%2F%2Fexample.org%2Frepo.git/main".'
            )
        return self.make(url, unquote(ref))

    def from_url(self, path, base_url):
        raise NotImplementedError("the policy builds git repositories from whole URLs")


#: Provider prefix -> provider. DOI providers join here later.
PROVIDERS = {p.name: p for p in (GitHubProvider(), GitLabProvider(), GitProvider(), GistProvider())}

#: Where each hosted provider lives unless configured otherwise.
DEFAULT_PROVIDER_URLS = {
    "gh": "https://github.com",
    "gl": "https://gitlab.com",
    "gist": "https://gist.github.com",
}


def build_slug_for_spec(spec, provider_urls=None):
    """The BinderHub build slug of a provider spec string (``gh/org/repo/ref``)."""
    name, _, rest = spec.partition("/")
    provider = PROVIDERS.get(name)
    if provider is None:
        raise SpecError(f'Unknown provider "{name}".')
    urls = dict(DEFAULT_PROVIDER_URLS, **(provider_urls or {}))
    return provider.from_spec(rest, urls.get(name, "")).build_slug
