"""Research archives as launch sources: Zenodo and Figshare records by DOI (pure).

A record in an archive is named by a DOI (``10.5281/zenodo.3242074``) and
resolved, like a git ref, to an immutable version: BinderHub's *resolved
ref*, which is also the image tag. The rules follow BinderHub's
``binderhub/repoproviders.py`` (2026-04, b9fad99), ``ZenodoProvider`` and
``FigshareProvider``, so that the same record gives the same image name:

- ``zenodo/<DOI>``: the DOI resolver's redirects lead to the record's page;
  the last path segment of the final URL is the record id (a concept DOI
  lands on its latest version). Resolved spec: the DOI up to ``zenodo``,
  then ``zenodo.<record id>``; build slug ``zenodo-<record id>``.
- ``figshare/<DOI>``: ``10.6084/m9.figshare.<article>[.v<version>]``; the DOI
  must exist at the resolver; without a version the article's latest
  version is asked from Figshare's API. Resolved ref ``<article>.v<version>``,
  build slug ``figshare-<article>.v<version>``.

Like BinderHub, the "repository URL" of a record (``BINDER_REPO_URL`` and
repo2docker's positional argument) is the DOI itself: repo2docker's content
providers resolve it in the build pod.

This module only reads specs, links and API answers; the network side is
:mod:`binder_spawner.archivenet`.
"""

import re
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import escapism

from .providers import Provider, RepoRef, SpecError

#: DOI syntax (Crossref's recommended pattern), at most 256 characters.
DOI = re.compile(r"^10\.\d{4,9}/[-._;()/:A-Za-z0-9]{1,240}$")
#: A resolved ref is an image tag and a label value: keep it to these characters.
RECORD_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
#: Forms a DOI is written in, as links or text.
_DOI_PREFIXES = ("https://doi.org/", "http://doi.org/", "https://dx.doi.org/", "doi:")


class ArchiveError(Exception):
    """An archive refused, or answered wrongly; ``message`` is one user-facing sentence."""

    def __init__(self, message, status_code=404):
        super().__init__(message)
        self.message = message
        self.status_code = status_code

    def __str__(self):
        return self.message


@dataclass(frozen=True)
class ArchiveRef(RepoRef):
    """A record in an archive: ``repo`` is the DOI, the spec has no ref part."""

    @property
    def spec(self):
        return f"{self.provider}/{self.repo}"


@dataclass(frozen=True)
class Resolution:
    """What resolving a record gives, in BinderHub's terms."""

    #: the resolved ref: the image tag (``3242074``, ``9782777.v1``)
    version: str
    #: the spec of exactly this version (``10.5281/zenodo.3242074``)
    resolved_spec: str
    build_slug: str
    #: BINDER_REF_URL
    ref_url: str
    #: where the record's API lives (``https://zenodo.org``), for downloads
    api_base: str = ""
    #: what to download when it is not the version (a revision's directory)
    content: str = ""


@dataclass(frozen=True)
class RecordFile:
    """One file of a record: where to download it, its size and checksum if known."""

    name: str
    url: str
    size: int | None = None
    #: ("md5", hex digest) or None
    checksum: tuple | None = None


def bare_doi(text):
    """The DOI in ``text`` (``doi:...``, ``https://doi.org/...`` or plain), or None."""
    for prefix in _DOI_PREFIXES:
        if text.lower().startswith(prefix):
            text = unquote(text[len(prefix) :])
            break
    return text if DOI.fullmatch(text) else None


def check_version(version, what):
    if not isinstance(version, str) or not RECORD_VERSION.fullmatch(version):
        raise ArchiveError(f"The archive gave an unusable {what} for this record.", 502)
    return version


class ArchiveProvider(Provider):
    """A provider whose spec is a DOI and whose versions come from an archive's API."""

    #: BinderHub's ``name`` (launch events, metrics)
    binderhub_name = ""
    example = ""

    def make(self, doi):
        return ArchiveRef(
            provider=self.name,
            repo=doi,
            ref="",
            repo_url=doi,
            build_slug="",
            # DOIs are case-insensitive: one record, one limit
            key=f"{self.name}/{doi.lower()}",
            spec_ref="",
        )

    def check_doi(self, doi):
        """Provider-specific rules on a DOI; raises :class:`SpecError`."""

    def from_spec(self, rest, base_url=""):
        doi = bare_doi(unquote(rest)) if rest else None
        if doi is None:
            raise SpecError(
                f'A {self.display_name} spec looks like "{self.name}/<DOI>", '
                f'e.g. "{self.name}/{self.example}".'
            )
        self.check_doi(doi)
        return self.make(doi)

    def from_record_url(self, host, path, query=""):
        """A record's web page on one of the provider's hosts -> ArchiveRef."""
        raise SpecError(f"This {self.display_name} link does not point to a record.")


class ZenodoProvider(ArchiveProvider):
    name = "zenodo"
    display_name = "Zenodo"
    binderhub_name = "Zenodo"
    example = "10.5281/zenodo.3242074"
    _RECORD_PATH = re.compile(r"^/(?:record|records)/(\d{1,20})/?$")

    def from_record_url(self, host, path, query=""):
        match = self._RECORD_PATH.match(path)
        if not match:
            raise SpecError("This Zenodo link does not point to a record.")
        # every record of zenodo.org has the DOI 10.5281/zenodo.<record id>
        return self.make(f"10.5281/zenodo.{match[1]}")

    @staticmethod
    def resolution(doi, final_url):
        """BinderHub's resolution from the URL the DOI finally leads to.

        ``ZenodoProvider.get_resolved_ref``: the last path segment of the
        effective URL; ``get_resolved_spec``: the DOI up to ``zenodo``, then
        ``zenodo.<record id>``; ``get_build_slug``: ``zenodo-<record id>``.
        """
        record_id = check_version(urlsplit(final_url).path.rsplit("/", maxsplit=1)[1], "record id")
        resolved = doi.split("zenodo")[0] + "zenodo." + record_id
        parts = urlsplit(final_url)
        return Resolution(
            version=record_id,
            resolved_spec=resolved,
            build_slug=f"zenodo-{record_id}",
            ref_url=f"https://doi.org/{resolved}",
            api_base=f"{parts.scheme}://{parts.netloc}",
        )


class FigshareProvider(ArchiveProvider):
    name = "figshare"
    display_name = "Figshare"
    binderhub_name = "Figshare"
    example = "10.6084/m9.figshare.9782777.v1"
    _ARTICLE_PATH = re.compile(r"^/articles/(?:[^/]+/)?[^/]+/(\d{1,20})(?:/(\d{1,9}))?/?$")

    def check_doi(self, doi):
        self.article(doi)

    @staticmethod
    def article(doi):
        """(article id, version or None) of a Figshare DOI, as BinderHub reads it.

        ``FigshareProvider.get_resolved_ref``: the identifier after the
        ``/`` split at ``.`` must have three fields or more; a last field
        ``v<N>`` is the version, the one before it the article.
        """
        _, _, identifier = doi.partition("/")
        fields = identifier.split(".")
        if len(fields) < 3:
            raise SpecError(
                "This is not a Figshare DOI: they look like 10.6084/m9.figshare.9782777.v1."
            )
        if fields[-1].startswith("v"):
            article, version = fields[-2], fields[-1][1:]
            if not version.isdigit():
                raise SpecError("The version of a Figshare DOI is a number, like .v1.")
        else:
            article, version = fields[-1], None
        if not article.isdigit():
            raise SpecError("A Figshare DOI ends in the article number, like m9.figshare.9782777.")
        return article, version

    def from_record_url(self, host, path, query=""):
        match = self._ARTICLE_PATH.match(path)
        if not match:
            raise SpecError("This Figshare link does not point to an article.")
        article, version = match[1], match[2]
        doi = f"10.6084/m9.figshare.{article}" + (f".v{version}" if version else "")
        return self.make(doi)

    @staticmethod
    def resolution(doi, article, version, api_base):
        """BinderHub's resolution for an article and its (found) version."""
        record_id = check_version(f"{article}.v{version}", "article version")
        resolved = doi.split("figshare")[0] + "figshare." + record_id
        return Resolution(
            version=record_id,
            resolved_spec=resolved,
            build_slug=f"figshare-{record_id}",
            ref_url=f"https://doi.org/{resolved}",
            api_base=api_base,
        )

    @staticmethod
    def latest_version(versions):
        """The highest ``version`` in Figshare's ``/articles/<id>/versions`` answer."""
        if not isinstance(versions, list):
            raise ArchiveError("Figshare answered the version list in an unexpected form.", 502)
        numbers = [v.get("version") for v in versions if isinstance(v, dict)]
        numbers = [n for n in numbers if isinstance(n, int) and n >= 0]
        if not numbers:
            raise ArchiveError("This Figshare article has no published version.", 404)
        return str(max(numbers))


class DataverseProvider(ArchiveProvider):
    name = "dataverse"
    display_name = "Dataverse"
    binderhub_name = "Dataverse"
    example = "10.7910/DVN/TJCLKP"

    def from_record_url(self, host, path, query=""):
        """``/dataset.xhtml?persistentId=doi:...`` or ``/citation?persistentId=doi:...``."""
        if path.rstrip("/") in ("/dataset.xhtml", "/citation"):
            for part in query.split("&"):
                key, _, value = part.partition("=")
                if key == "persistentId":
                    doi = bare_doi(unquote(value))
                    if doi is not None:
                        return self.make(doi)
        raise SpecError(
            "This Dataverse link does not point to a dataset: use its DOI, "
            'or a ".../dataset.xhtml?persistentId=doi:..." link.'
        )

    @staticmethod
    def resolution(answer, ref_url_fallback=""):
        """BinderHub's resolution from the dataset's ``/api/datasets/:persistentId`` answer.

        ``DataverseProvider.get_resolved_ref`` (repoproviders.py b9fad99
        L407-437): ref ``<data.id>.v<major>.<minor>`` of ``latestVersion``;
        resolved spec ``<authority>/<identifier>``; ref URL ``persistentUrl``;
        build slug ``dataverse-`` + the identifier escaped (``-`` escapes) and
        lower-cased.
        """
        data = answer.get("data") if isinstance(answer, dict) else None
        if (
            not isinstance(answer, dict)
            or answer.get("status") != "OK"
            or not isinstance(data, dict)
        ):
            raise ArchiveError("Dataverse answered in an unexpected form for this dataset.", 502)
        latest = data.get("latestVersion") or {}
        try:
            fields = (
                data["id"],
                latest["versionNumber"],
                latest["versionMinorNumber"],
                data["identifier"],
                data["authority"],
            )
        except (KeyError, TypeError):
            raise ArchiveError("This Dataverse dataset has no published version.", 404) from None
        dataset_id, major, minor, identifier, authority = fields
        if not all(isinstance(v, int) for v in (dataset_id, major, minor)) or not all(
            isinstance(v, str) and v for v in (identifier, authority)
        ):
            raise ArchiveError("Dataverse answered in an unexpected form for this dataset.", 502)
        version = check_version(f"{dataset_id}.v{major}.{minor}", "dataset version")
        return Resolution(
            version=version,
            resolved_spec=f"{authority}/{identifier}",
            build_slug="dataverse-" + escapism.escape(identifier, escape_char="-").lower(),
            ref_url=data.get("persistentUrl") or ref_url_fallback,
        )


class HydroshareProvider(ArchiveProvider):
    """HydroShare resources: the spec is (or holds) the 32-hex resource id, not a DOI.

    BinderHub (repoproviders.py b9fad99 L441-500) reads the first 32 hex
    digits anywhere in the spec; the repository URL (repo2docker's argument,
    ``BINDER_REPO_URL``, also the resolved spec and the ref URL) is
    ``https://www.hydroshare.org/resource/<id>``; the resolved ref is
    ``<id>.v<epoch of the resource's "modified" date>``, the build slug
    ``hydroshare-<ref>``.
    """

    name = "hydroshare"
    display_name = "HydroShare"
    binderhub_name = "Hydroshare"
    example = "8f7c2f0341ef4180b0dbe97f59130756"
    _ID = re.compile(r"([0-9a-f]{32})")
    #: BinderHub's repository URL of a resource, whatever the configured API
    WEB_URL = "https://www.hydroshare.org/resource/"

    def make(self, resource_id):
        return ArchiveRef(
            provider=self.name,
            repo=resource_id,
            ref="",
            repo_url=self.WEB_URL + resource_id,
            build_slug="",
            key=f"{self.name}/{resource_id}",
            spec_ref="",
        )

    def from_spec(self, rest, base_url=""):
        match = self._ID.search(unquote(rest)) if len(rest) < 512 else None
        if match is None:
            raise SpecError(
                'A HydroShare spec looks like "hydroshare/<resource id>", '
                f'e.g. "hydroshare/{self.example}".'
            )
        return self.make(match[1])

    def from_record_url(self, host, path, query=""):
        match = re.match(r"^/resource/([0-9a-f]{32})/?$", path)
        if not match:
            raise SpecError("This HydroShare link does not point to a resource.")
        return self.make(match[1])

    @classmethod
    def resolution(cls, resource_id, elements):
        """From ``/hsapi/resource/<id>/scimeta/elements``: the ``modified`` date, as BinderHub."""
        dates = elements.get("dates") if isinstance(elements, dict) else None
        modified = None
        for item in dates if isinstance(dates, list) else []:
            if isinstance(item, dict) and item.get("type") == "modified":
                modified = item.get("start_date")
                break
        if not isinstance(modified, str):
            raise ArchiveError("HydroShare gave no modification date for this resource.", 502)
        epoch = _epoch(modified.split(".")[0], "%Y-%m-%dT%H:%M:%S", "HydroShare")
        version = check_version(f"{resource_id}.v{epoch}", "resource version")
        url = cls.WEB_URL + resource_id
        return Resolution(
            version=version,
            resolved_spec=url,
            build_slug=f"hydroshare-{version}",
            ref_url=url,
        )


class CKANProvider(ArchiveProvider):
    """CKAN datasets by URL: ``ckan/<URL-encoded dataset URL>``, on any CKAN portal.

    BinderHub (repoproviders.py b9fad99 L503-570): the repository URL, the
    resolved spec and the ref URL are the dataset URL (decoded); the dataset
    id is the path segment after ``/dataset/``; the resolved ref is
    ``<dataset id>.v<epoch of metadata_modified>`` from the portal's
    ``/api/3/action/package_show`` (``activity_data_show`` for a
    ``/history/<activity id>`` path or an ``activity_id`` query); the build
    slug ``ckan-<dataset id>``.
    """

    name = "ckan"
    display_name = "CKAN"
    binderhub_name = "CKAN"
    example = "https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fsample-dataset-1"
    _DATASET_ID = re.compile(r"^[A-Za-z0-9_-]{1,100}$")

    def make(self, url):
        return ArchiveRef(
            provider=self.name,
            repo=quote(url, safe=""),
            ref="",
            repo_url=url,
            build_slug="",
            key=f"{self.name}/{url}",
            spec_ref="",
        )

    def from_spec(self, rest, base_url=""):
        url = unquote(rest)
        self.dataset(url)
        return self.make(url)

    def from_record_url(self, host, path, query=""):
        raise SpecError("CKAN datasets are launched as ckan/<URL-encoded dataset URL>.")

    @classmethod
    def dataset(cls, url):
        """(API base ending in ``/``, dataset id, activity id or None) of a dataset URL."""
        parts = urlsplit(url)
        if (
            parts.scheme not in ("https", "http")
            or not parts.netloc
            or "/dataset/" not in parts.path
        ):
            raise SpecError(
                'A CKAN spec looks like "ckan/<URL-encoded dataset URL>", '
                f'e.g. "ckan/{cls.example}".'
            )
        prefix, _, rest = parts.path.partition("/dataset/")
        segments = rest.split("/")
        dataset_id = segments[0]
        if not cls._DATASET_ID.match(dataset_id):
            raise SpecError("This CKAN link does not name a dataset (…/dataset/<name>).")
        activity = None
        if "history" in segments[:-1]:
            activity = segments[segments.index("history") + 1]
        elif parse_qs(parts.query).get("activity_id"):
            activity = parse_qs(parts.query)["activity_id"][0]
        api = f"{parts.scheme}://{parts.netloc}{prefix}/api/3/action/"
        return api, dataset_id, activity

    @classmethod
    def package_url(cls, url):
        """The API URL that answers the dataset (at its activity, if the URL names one)."""
        api, dataset_id, activity = cls.dataset(url)
        if activity:
            return f"{api}activity_data_show?" + urlencode(
                {"id": activity, "object_type": "package"}
            )
        return f"{api}package_show?" + urlencode({"id": dataset_id})

    @classmethod
    def resolution(cls, url, answer):
        result = answer.get("result") if isinstance(answer, dict) else None
        modified = result.get("metadata_modified") if isinstance(result, dict) else None
        if not isinstance(modified, str):
            raise ArchiveError("CKAN answered in an unexpected form for this dataset.", 502)
        _, dataset_id, _ = cls.dataset(url)
        epoch = _epoch(modified, "%Y-%m-%dT%H:%M:%S.%f", "CKAN")
        version = check_version(f"{dataset_id}.v{epoch}", "dataset version")
        return Resolution(
            version=version,
            resolved_spec=url,
            build_slug=f"ckan-{dataset_id}",
            ref_url=url,
            api_base=cls.package_url(url),
        )


class SwhidProvider(ArchiveProvider):
    """Software Heritage identifiers: ``swhid/swh:1:dir:<hash>`` or ``swh:1:rev:<hash>``.

    BinderHub has no such provider; repo2docker's ``Swhid`` content provider
    takes the identifier as the repository. An identifier names immutable
    content, so it is its own version (the hash is the image tag); the build
    slug is ``swhid-`` and the identifier, as BinderHub's other archives name
    theirs. Qualifiers (``;origin=...``) are dropped, as repo2docker reads
    only the core identifier.
    """

    name = "swhid"
    display_name = "Software Heritage"
    binderhub_name = "Software Heritage"
    example = "swh:1:dir:0123456789abcdef0123456789abcdef01234567"
    _CORE = re.compile(r"^swh:1:(dir|rev):([0-9a-f]{40})$")

    def make(self, core):
        return ArchiveRef(
            provider=self.name,
            repo=core,
            ref="",
            repo_url=core,
            build_slug="",
            key=f"{self.name}/{core}",
            spec_ref="",
        )

    def from_spec(self, rest, base_url=""):
        core = unquote(rest).split(";", 1)[0]
        if not self._CORE.match(core):
            raise SpecError(
                'A Software Heritage spec looks like "swhid/swh:1:dir:<40 hex digits>" '
                "(a directory) or swh:1:rev:<40 hex digits> (a revision)."
            )
        return self.make(core)

    @classmethod
    def parts(cls, core):
        """("dir" or "rev", hash) of a core identifier."""
        match = cls._CORE.match(core)
        return match[1], match[2]

    @classmethod
    def resolution(cls, core, directory, api_base):
        kind, digest = cls.parts(core)
        return Resolution(
            version=digest,
            resolved_spec=core,
            build_slug=f"swhid-{core}",
            ref_url=f"https://archive.softwareheritage.org/{core}",
            api_base=api_base,
            content=directory,
        )


def _epoch(text, form, archive):
    """Seconds since 1970 of a UTC date in ``form`` (BinderHub truncates to whole seconds)."""
    try:
        parsed = datetime.strptime(text, form)
    except ValueError:
        raise ArchiveError(
            f"{archive} gave a date this hub cannot read: {text[:40]!r}.", 502
        ) from None
    return str(int(parsed.replace(tzinfo=timezone(timedelta(0))).timestamp()))


#: Provider prefix -> archive provider.
ARCHIVE_PROVIDERS = {
    p.name: p
    for p in (
        ZenodoProvider(),
        FigshareProvider(),
        DataverseProvider(),
        HydroshareProvider(),
        CKANProvider(),
        SwhidProvider(),
    )
}

#: BinderHub's provider names (launch events, metrics) of the archive providers.
BINDERHUB_NAMES = {p.name: p.binderhub_name for p in ARCHIVE_PROVIDERS.values()}


def is_archive(provider):
    return provider in ARCHIVE_PROVIDERS


def provider_for_doi(doi):
    """The archive provider a bare DOI belongs to, by its registrant's prefix, or None.

    Zenodo's DOIs are ``10.5281/zenodo.<id>``; Figshare's carry ``.figshare.``
    (``10.6084/m9.figshare.<id>``, institutional portals too).
    """
    lowered = doi.lower()
    if lowered.startswith("10.5281/zenodo."):
        return "zenodo"
    if ".figshare." in lowered:
        return "figshare"
    if lowered.startswith("10.7910/dvn/"):
        return "dataverse"  # Harvard Dataverse; other installations: dataverse/<DOI>
    if lowered.startswith("10.4211/hs."):
        return "hydroshare"
    return None


# --- API answers -> files --------------------------------------------------


def _checksum(value):
    """``"md5:abc..."`` (Zenodo) or a bare hex digest -> ("md5", hex) or None."""
    if not isinstance(value, str) or not value:
        return None
    algorithm, _, digest = value.partition(":")
    if not digest:
        algorithm, digest = "md5", value
    algorithm = algorithm.lower().replace("-", "")
    if algorithm not in ("md5", "sha1", "sha256", "sha512") or not re.match(
        r"^[0-9a-fA-F]+$", digest
    ):
        return None
    return algorithm, digest.lower()


def _size(value):
    return value if isinstance(value, int) and value >= 0 else None


def zenodo_files(listing):
    """Zenodo's ``links.files`` answer (``{"entries": [...]}``) -> [RecordFile].

    Each entry has ``key`` (the name), ``links.content``, ``size`` and
    ``checksum`` (``md5:<hex>``), as repo2docker's Zenodo provider reads them.
    """
    entries = listing.get("entries") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        raise ArchiveError("Zenodo answered the record's file list in an unexpected form.", 502)
    files = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        url = (entry.get("links") or {}).get("content")
        name = entry.get("key")
        if not isinstance(url, str) or not isinstance(name, str):
            raise ArchiveError("Zenodo listed a file without a name or a link.", 502)
        files.append(
            RecordFile(
                name=name,
                url=url,
                size=_size(entry.get("size")),
                checksum=_checksum(entry.get("checksum")),
            )
        )
    return files


def figshare_files(article):
    """Figshare's ``/articles/<id>/versions/<v>`` answer -> [RecordFile].

    ``files`` entries have ``name``, ``download_url``, ``size``,
    ``computed_md5`` and ``is_link_only`` (links to elsewhere are skipped, as
    repo2docker's Figshare provider does).
    """
    entries = article.get("files") if isinstance(article, dict) else None
    if not isinstance(entries, list):
        raise ArchiveError("Figshare answered the article in an unexpected form.", 502)
    files = []
    for entry in entries:
        if not isinstance(entry, dict) or entry.get("is_link_only"):
            continue
        url, name = entry.get("download_url"), entry.get("name")
        if not isinstance(url, str) or not isinstance(name, str):
            raise ArchiveError("Figshare listed a file without a name or a link.", 502)
        files.append(
            RecordFile(
                name=name,
                url=url,
                size=_size(entry.get("size")),
                checksum=_checksum(entry.get("computed_md5") or entry.get("supplied_md5")),
            )
        )
    return files


def dataverse_files(answer, base_url):
    """One page of ``/api/datasets/<id>/versions/<v>/files`` -> [RecordFile].

    Each entry has ``label``, ``directoryLabel`` (optional) and ``dataFile``
    with ``id``, ``filesize``, ``checksum`` (``{"type": "MD5", "value"}``) and,
    for ingested tabular files, ``originalFileName``/``originalFileSize``:
    those are downloaded in their original format (``?format=original``, as
    repo2docker does), so their checksum and size are the original's.
    """
    entries = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(entries, list):
        raise ArchiveError("Dataverse answered the dataset's file list in an unexpected form.", 502)
    files = []
    for entry in entries:
        data_file = entry.get("dataFile") if isinstance(entry, dict) else None
        if not isinstance(data_file, dict) or not isinstance(data_file.get("id"), int):
            raise ArchiveError("Dataverse listed a file without an id.", 502)
        original = data_file.get("originalFileName")
        name = original or entry.get("label")
        if not isinstance(name, str):
            raise ArchiveError("Dataverse listed a file without a name.", 502)
        folder = entry.get("directoryLabel") or ""
        if not isinstance(folder, str):
            raise ArchiveError("Dataverse listed a file in an unreadable folder.", 502)
        checksum = data_file.get("checksum") or {}
        digest = None
        if isinstance(checksum, dict) and isinstance(checksum.get("type"), str):
            digest = _checksum(f"{checksum['type']}:{checksum.get('value')}")
        elif data_file.get("md5"):
            digest = _checksum(data_file.get("md5"))
        size = _size(data_file.get("originalFileSize") if original else data_file.get("filesize"))
        files.append(
            RecordFile(
                name=f"{folder.strip('/')}/{name}" if folder.strip("/") else name,
                url=f"{base_url}/api/access/datafile/{data_file['id']}?format=original",
                size=size,
                checksum=digest,
            )
        )
    return files


def ckan_files(answer):
    """The resources of a CKAN dataset (``package_show`` answer) -> [RecordFile].

    As repo2docker's CKAN provider: every resource with a ``url``, named by
    the URL's last path segment (else the resource id).
    """
    result = answer.get("result") if isinstance(answer, dict) else None
    resources = result.get("resources") if isinstance(result, dict) else None
    if not isinstance(resources, list):
        raise ArchiveError("CKAN answered the dataset's resources in an unexpected form.", 502)
    files = []
    for resource in resources:
        url = resource.get("url") if isinstance(resource, dict) else None
        if not url or not isinstance(url, str):
            continue
        name = unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or str(resource.get("id") or "")
        files.append(RecordFile(name=name, url=url, size=_size(resource.get("size"))))
    return files
