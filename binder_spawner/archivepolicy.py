"""Which archives a hub launches from, how records are resolved, and how their files come.

:class:`ArchivePolicy` is the archive half of
:class:`binder_spawner.repos.RepoPolicy` (configure it as ``c.RepoPolicy.*``):
the DOI resolver and archive hosts, limits on what a record may weigh, the
resolution of a record to its version (cached like git refs, misses too,
concurrent resolutions of one record share one request), and, for local
mode, the download of a record's files into a directory root just made.

Every request goes through :class:`~binder_spawner.archivenet.ArchiveClient`,
so the network rules of git URLs (``allow_http``, ``allowed_hosts``,
``banned_networks``) hold for every host contacted, each redirect included.
"""

import asyncio
import dataclasses
import hashlib
import os
import re
from urllib.parse import urlsplit, urlunsplit

from jupyterhub.traitlets import ByteSpecification
from traitlets import Dict, Float, Integer, List, Unicode, validate
from traitlets.config import LoggingConfigurable

from . import archivefiles
from .archivenet import ArchiveClient, url_hosts
from .archives import (
    ARCHIVE_PROVIDERS,
    ArchiveError,
    CKANProvider,
    DataverseProvider,
    FigshareProvider,
    HydroshareProvider,
    RecordFile,
    SwhidProvider,
    ZenodoProvider,
    ckan_files,
    dataverse_files,
    figshare_files,
    zenodo_files,
)

#: Where a DOI of each provider may lead and whose record links are recognised (mybinder.org's).
DEFAULT_ARCHIVE_HOSTS = {
    "zenodo": ["zenodo.org", "www.zenodo.org", "sandbox.zenodo.org"],
    "figshare": ["figshare.com", "api.figshare.com"],
    # Dataverse installations (a selection of the registry repo2docker reads,
    # https://iqss.github.io/dataverse-installations/data/data.json)
    "dataverse": [
        "dataverse.harvard.edu",
        "demo.dataverse.org",
        "dataverse.nl",
        "data.qdr.syr.edu",
        "borealisdata.ca",
        "dataverse.no",
        "recherche.data.gouv.fr",
        "data.cimmyt.org",
        "dataverse.unc.edu",
        "researchdata.ntu.edu.sg",
        "dataverse.iit.it",
        "darus.uni-stuttgart.de",
        "heidata.uni-heidelberg.de",
        "edmond.mpg.de",
        "data.aussda.at",
        "dvn.fudan.edu.cn",
        "dataverse.ird.fr",
        "entrepot.recherche.data.gouv.fr",
    ],
    "hydroshare": ["www.hydroshare.org", "hydroshare.org"],
    # any public CKAN portal, as on mybinder.org: a list here allows only those hosts
    "ckan": [],
    "swhid": ["archive.softwareheritage.org"],
}

#: Files asked per page of a Dataverse file list.
DATAVERSE_PAGE = 1000


def _megabytes(size):
    return f"{size / 1024**2:,.0f} MB"


def _size_text(size):
    if size < 1024:
        return f"{size} bytes"
    if size < 1024**2:
        return f"{size / 1024:,.0f} KB"
    return _megabytes(size)


class ArchivePolicy(LoggingConfigurable):
    """Archive settings, resolution and downloads (base class of RepoPolicy)."""

    doi_resolver_url = Unicode(
        "https://doi.org",
        help="""
        The DOI resolver: ``<url>/<DOI>`` redirects to the record's page, as
        ``https://doi.org`` does. Default ``https://doi.org``.

        Example: ``c.RepoPolicy.doi_resolver_url = "https://doi.example.org"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    archive_hosts = Dict(
        value_trait=List(Unicode()),
        help="""
        Hosts (``name`` or ``name:port``) of each archive provider: a DOI of
        that provider must lead to one of them, record links on them are read
        as that provider's, and its API is asked there. Missing providers keep
        their defaults (mybinder.org's): ``zenodo``: zenodo.org,
        www.zenodo.org, sandbox.zenodo.org; ``figshare``: figshare.com,
        api.figshare.com; ``dataverse``: the Dataverse installations whose
        datasets may be launched (dataverse.harvard.edu and other large
        public ones; a DOI of any other installation is refused). File downloads may be redirected to any host that
        passes the network rules (archives keep files on storage services).
        A host on a private network must also be in :attr:`allowed_hosts`.

        Example: ``c.RepoPolicy.archive_hosts = {"zenodo": ["zenodo.example.org"]}``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    figshare_api_url = Unicode(
        "https://api.figshare.com/v2",
        help="""
        Figshare's API (article versions and files). Default
        ``https://api.figshare.com/v2``.

        Example: ``c.RepoPolicy.figshare_api_url = "https://api.figshare.example.org/v2"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    hydroshare_url = Unicode(
        "https://www.hydroshare.org",
        help="""
        HydroShare's site and API (resource metadata, bags). Default
        ``https://www.hydroshare.org``. The repository URL of a resource
        (``BINDER_REPO_URL``, repo2docker's argument) stays BinderHub's
        ``https://www.hydroshare.org/resource/<id>``.

        Example: ``c.RepoPolicy.hydroshare_url = "https://hydroshare.example.org"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    swh_api_url = Unicode(
        "https://archive.softwareheritage.org/api/1",
        help="""
        Software Heritage's API (directories, revisions, the vault that packs a
        directory for download). Default ``https://archive.softwareheritage.org/api/1``.

        Example: ``c.RepoPolicy.swh_api_url = "https://swh.example.org/api/1"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    swh_vault_timeout = Float(
        300.0,
        help="""
        Seconds local mode waits for Software Heritage's vault to pack a
        directory, asking again every :attr:`swh_vault_interval` seconds;
        then the launch is refused with a hint to retry. Default 300.

        Example: ``c.RepoPolicy.swh_vault_timeout = 600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    swh_vault_interval = Float(
        5.0,
        help="""
        Seconds between two questions to Software Heritage's vault while it
        packs a directory. Default 5.

        Example: ``c.RepoPolicy.swh_vault_interval = 10``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    archive_timeout = Float(
        20.0,
        help="""
        Seconds to connect to an archive, and for one API answer (a file's
        download has :attr:`archive_download_timeout`). Default 20.

        Example: ``c.RepoPolicy.archive_timeout = 30``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    archive_download_timeout = Float(
        1800.0,
        help="""
        Seconds the download of one file of a record may take; a slower one
        (or a server that trickles) fails the launch with a hint to retry.
        Default 1800 (30 minutes, a build step's limit).

        Example: ``c.RepoPolicy.archive_download_timeout = 600``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    archive_max_bytes = ByteSpecification(
        1024**3,
        help="""
        Most bytes a record's files may weigh (local mode downloads them).
        A record whose file list says more is refused before anything is
        downloaded; a download that sends more is stopped. Default 1 GB.

        Example: ``c.RepoPolicy.archive_max_bytes = "500M"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    archive_max_unpacked_bytes = ByteSpecification(
        2 * 1024**3,
        help="""
        Most bytes a record's zip may unpack to (a zip bomb is refused).
        Default 2 GB.

        Example: ``c.RepoPolicy.archive_max_unpacked_bytes = "1G"``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    archive_max_files = Integer(
        10000,
        help="""
        Most files a record, or its zip, may hold. Default 10000.

        Example: ``c.RepoPolicy.archive_max_files = 2000``

        .. versionadded:: 0.1
        """,
    ).tag(config=True)

    @validate("doi_resolver_url", "figshare_api_url", "hydroshare_url", "swh_api_url")
    def _validate_base_url(self, proposal):
        value = proposal.value.rstrip("/")
        if not value.startswith(("https://", "http://")):
            raise ValueError(
                f"RepoPolicy.{proposal.trait.name} must be an http(s) URL, got {proposal.value!r}"
            )
        return value

    # -- hosts ----------------------------------------------------------------

    def archive_host_set(self, provider):
        """``{(host, port or None)}`` of a provider's hosts."""
        hosts = self.archive_hosts.get(provider, DEFAULT_ARCHIVE_HOSTS.get(provider, []))
        return {self._split_hostport(h.strip().lower()) for h in hosts}

    def archive_provider_for_host(self, host, port):
        """The archive provider whose record links live on ``host:port``, or None."""
        for name in ARCHIVE_PROVIDERS:
            hosts = self.archive_host_set(name)
            if (host, port) in hosts or (host, None) in hosts:
                return name
        return None

    def _api_hosts(self, provider):
        hosts = set(self.archive_host_set(provider))
        if provider == "figshare":
            hosts |= url_hosts([self.figshare_api_url])
        if provider == "hydroshare":
            hosts |= url_hosts([self.hydroshare_url])
        if provider == "swhid":
            hosts |= url_hosts([self.swh_api_url])
        return hosts

    def _client(self):
        return ArchiveClient(
            self, timeout=self.archive_timeout, download_timeout=self.archive_download_timeout
        )

    # -- resolution -------------------------------------------------------------

    async def resolve_archive(self, spec):
        """The :class:`~binder_spawner.archives.Resolution` of an archive spec (cached)."""
        key = (self._fingerprint(), "archive", spec.provider, spec.repo_url.lower())
        return await self._cached_call(key, lambda: self._resolve_archive(spec))

    async def _resolve_archive(self, spec):
        client = self._client()
        try:
            if spec.provider == "zenodo":
                return await self._resolve_zenodo(client, spec.repo_url)
            if spec.provider == "figshare":
                return await self._resolve_figshare(client, spec.repo_url)
            if spec.provider == "dataverse":
                return await self._resolve_dataverse(client, spec.repo_url)
            if spec.provider == "ckan":
                return await self._resolve_ckan(client, spec.repo_url)
            if spec.provider == "swhid":
                return await self._resolve_swhid(client, spec.repo_url)
            if spec.provider == "hydroshare":
                return await self._resolve_hydroshare(client, spec.spec.partition("/")[2])
        finally:
            client.close()
        raise ArchiveError(f"Unknown archive provider {spec.provider}.", 400)

    async def _landing(self, client, provider, doi):
        """GET the DOI at the resolver, following its redirects; the final answer."""
        display = ARCHIVE_PROVIDERS[provider].display_name
        answer = await client.get(
            f"{self.doi_resolver_url}/{doi}", f"The {display} record {doi}", accept="text/html"
        )
        host, port = client.check(answer.url)
        hosts = self.archive_host_set(provider)
        if (host, port) not in hosts and (host, None) not in hosts:
            raise ArchiveError(f"The DOI {doi} does not lead to a {display} record.", 422)
        return answer

    async def _resolve_zenodo(self, client, doi):
        # BinderHub ZenodoProvider.get_resolved_ref: fetch https://doi.org/<spec>,
        # take the last segment of the effective URL
        answer = await self._landing(client, "zenodo", doi)
        return ZenodoProvider.resolution(doi, answer.url)

    async def _resolve_figshare(self, client, doi):
        # BinderHub FigshareProvider.get_resolved_ref: the DOI must resolve (404 otherwise);
        # an unversioned DOI is the article's latest version, from the API
        await self._landing(client, "figshare", doi)
        article, version = FigshareProvider.article(doi)
        if version is None:
            answer = await client.get(
                f"{self.figshare_api_url}/articles/{article}/versions",
                f"The Figshare article {article}",
                hosts=self._api_hosts("figshare"),
            )
            version = FigshareProvider.latest_version(answer.json("Figshare"))
        return FigshareProvider.resolution(doi, article, version, self.figshare_api_url)

    async def _resolve_dataverse(self, client, doi):
        # BinderHub DataverseProvider.get_resolved_ref: the page the DOI leads to,
        # its path replaced by /api/datasets/:persistentId (the query names the dataset)
        answer = await self._landing(client, "dataverse", doi)
        parts = urlsplit(answer.url)
        query = parts.query if "persistentId=" in parts.query else f"persistentId=doi:{doi}"
        search = urlunsplit((parts.scheme, parts.netloc, "/api/datasets/:persistentId", query, ""))
        dataset = await client.get(
            search, f"The Dataverse dataset {doi}", hosts=self._api_hosts("dataverse")
        )
        resolution = DataverseProvider.resolution(dataset.json("Dataverse"))
        return dataclasses.replace(resolution, api_base=f"{parts.scheme}://{parts.netloc}")

    async def _resolve_hydroshare(self, client, resource_id):
        # BinderHub HydroshareProvider.get_resolved_ref: the "modified" date of the
        # resource's science metadata
        answer = await client.get(
            f"{self.hydroshare_url}/hsapi/resource/{resource_id}/scimeta/elements",
            f"The HydroShare resource {resource_id}",
            hosts=self._api_hosts("hydroshare"),
        )
        resolution = HydroshareProvider.resolution(resource_id, answer.json("HydroShare"))
        return dataclasses.replace(resolution, api_base=self.hydroshare_url)

    def check_ckan_url(self, url):
        """The dataset URL of a ``ckan/`` spec passes the network rules and the CKAN host list."""
        host, port = ArchiveClient(self).check(url)
        allowed = self.archive_host_set("ckan")
        if allowed and (host, port) not in allowed and (host, None) not in allowed:
            raise ArchiveError(f"CKAN datasets on {host} cannot be launched on this hub.", 403)
        return host, port

    async def _resolve_ckan(self, client, url):
        # BinderHub CKANProvider.get_resolved_ref: package_show (or activity_data_show),
        # metadata_modified as seconds since 1970
        host = self.check_ckan_url(url)
        package = CKANProvider.package_url(url)
        answer = await client.get(package, "The CKAN dataset", hosts={host})
        return CKANProvider.resolution(url, answer.json("CKAN"))

    async def _resolve_swhid(self, client, core):
        # the identifier is the version; asking the archive tells a missing one at once
        # (and a revision's directory, which is what the vault packs)
        kind, digest = SwhidProvider.parts(core)
        what = f"The Software Heritage object {core}"
        hosts = self._api_hosts("swhid")
        if kind == "rev":
            answer = await client.get(f"{self.swh_api_url}/revision/{digest}/", what, hosts=hosts)
            directory = answer.json("Software Heritage").get("directory")
            if not isinstance(directory, str) or not re.fullmatch(r"[0-9a-f]{40}", directory):
                raise ArchiveError(f"{what} has no readable directory.", 502)
        else:
            await client.get(f"{self.swh_api_url}/directory/{digest}/", what, hosts=hosts)
            directory = digest
        return SwhidProvider.resolution(core, directory, self.swh_api_url)

    async def _swh_vault(self, client, resolution, emit):
        """The URL of the packed directory, once the vault has it (asked every interval)."""
        directory = resolution.content
        url = f"{resolution.api_base}/vault/directory/{directory}/"
        what = f"the Software Heritage directory {directory}"
        hosts = self._api_hosts("swhid")
        answer = await client.get(url, what, hosts=hosts, method="POST")
        deadline = asyncio.get_running_loop().time() + self.swh_vault_timeout
        while True:
            receipt = answer.json("Software Heritage")
            status = receipt.get("status") if isinstance(receipt, dict) else None
            if status == "done" and isinstance(receipt.get("fetch_url"), str):
                return receipt["fetch_url"]
            if status not in ("new", "pending"):
                raise ArchiveError(f"Software Heritage could not pack {what}.", 502)
            if asyncio.get_running_loop().time() > deadline:
                raise ArchiveError(
                    f"Software Heritage is still packing {what}. Try again in a few minutes.", 503
                )
            emit(f"Software Heritage is packing the directory ({status})")
            await asyncio.sleep(self.swh_vault_interval)
            answer = await client.get(url, what, hosts=hosts)

    # -- files (local mode) -------------------------------------------------------

    async def record_files(self, client, provider, resolution, emit=lambda line: None):
        """The [RecordFile] of a resolved record, from the archive's API."""
        if provider == "zenodo":
            what = f"The Zenodo record {resolution.version}"
            hosts = self._api_hosts("zenodo")
            record = await client.get(
                f"{resolution.api_base}/api/records/{resolution.version}", what, hosts=hosts
            )
            links = record.json("Zenodo").get("links") or {}
            files_url = links.get("files") if isinstance(links, dict) else None
            if not isinstance(files_url, str):
                raise ArchiveError(f"{what} has no file list.", 502)
            listing = await client.get(files_url, what, hosts=hosts)
            return zenodo_files(listing.json("Zenodo"))
        if provider == "figshare":
            article, _, version = resolution.version.partition(".v")
            what = f"The Figshare article {resolution.version}"
            answer = await client.get(
                f"{resolution.api_base}/articles/{article}/versions/{version}",
                what,
                hosts=self._api_hosts("figshare"),
            )
            return figshare_files(answer.json("Figshare"))
        if provider == "dataverse":
            return await self._dataverse_files(client, resolution)
        if provider == "ckan":
            host = client.check(resolution.api_base)
            answer = await client.get(resolution.api_base, "The CKAN dataset", hosts={host})
            body = answer.json("CKAN")
            current = CKANProvider.resolution(resolution.resolved_spec, body)
            if current.version != resolution.version:
                raise ArchiveError(
                    "The CKAN dataset changed while it was being launched. Launch it again.", 409
                )
            return ckan_files(body)
        if provider == "swhid":
            fetch_url = await self._swh_vault(client, resolution, emit)
            return [RecordFile(name=f"{resolution.content}.tar.gz", url=fetch_url)]
        if provider == "hydroshare":
            # the resource's bag: a zip whose files are under <id>/data/contents/
            resource_id = resolution.version.partition(".v")[0]
            return [
                RecordFile(
                    name=f"{resource_id}.zip",
                    url=f"{resolution.api_base}/hsapi/resource/{resource_id}/",
                )
            ]
        raise ArchiveError(f"Unknown archive provider {provider}.", 400)

    async def _dataverse_files(self, client, resolution):
        """Every file of exactly the resolved version, page by page (``limit``/``offset``)."""
        dataset_id, _, version = resolution.version.partition(".v")
        what = f"The Dataverse dataset {resolution.resolved_spec}"
        files = []
        while True:
            answer = await client.get(
                f"{resolution.api_base}/api/datasets/{dataset_id}/versions/{version}/files"
                f"?limit={DATAVERSE_PAGE}&offset={len(files)}",
                what,
                hosts=self._api_hosts("dataverse"),
            )
            body = answer.json("Dataverse")
            page = dataverse_files(body, resolution.api_base)
            files += page
            total = body.get("totalCount")
            if isinstance(total, int):
                # Dataverse 6.1+: the server may send fewer than asked per page
                if not page or len(files) >= total:
                    return files
            elif len(page) < DATAVERSE_PAGE:
                return files
            if len(files) > self.archive_max_files:
                return files  # refused by the caller, with the count

    def download_record(self, provider, resolution, dest, emit):
        """Download a resolved record's files into ``dest``, unpack a lone zip (blocking).

        ``dest``: an empty directory root has just made, that nothing else
        can write. ``emit(line)`` reports progress (called from this thread).
        Runs its own event loop: call it in a worker thread
        (``asyncio.to_thread``), so no byte is written on the hub's loop.
        Raises :class:`~binder_spawner.archives.ArchiveError`.
        """
        return asyncio.run(self._download_record(provider, resolution, dest, emit))

    async def _download_record(self, provider, resolution, dest, emit):
        client = self._client()
        dir_fd = archivefiles.open_dir(dest)
        try:
            files = await self.record_files(client, provider, resolution, emit)
            if not files:
                raise ArchiveError("This record has no files to launch.", 422)
            self._check_listing(files)
            total = 0
            for record_file in files:
                emit(
                    f"Downloading {record_file.name}"
                    + (f" ({_size_text(record_file.size)})" if record_file.size else "")
                )
                total += await self._download_file(client, dir_fd, record_file, total)
            if len(files) == 1 and archivefiles.is_zip(dir_fd, files[0].name):
                emit(f"Unpacking {files[0].name}")
                only = None
                if provider == "hydroshare":
                    only = resolution.version.partition(".v")[0] + "/data/contents/"
                count, size = archivefiles.extract_zip(
                    dir_fd,
                    files[0].name,
                    max_files=self.archive_max_files,
                    max_bytes=self.archive_max_unpacked_bytes,
                    only=only,
                )
                archivefiles.flatten_single_directory(dir_fd)
                emit(f"Unpacked {count} files ({_size_text(size)})")
            elif provider == "swhid":
                emit(f"Unpacking {files[0].name}")
                count, size = archivefiles.extract_tar(
                    dir_fd,
                    files[0].name,
                    max_files=self.archive_max_files,
                    max_bytes=self.archive_max_unpacked_bytes,
                    only=f"{resolution.content}/",
                )
                emit(f"Unpacked {count} files ({_size_text(size)})")
            return total
        finally:
            os.close(dir_fd)
            client.close()

    def _check_listing(self, files):
        if len(files) > self.archive_max_files:
            raise ArchiveError(
                f"This record has {len(files)} files, more than the {self.archive_max_files} "
                "this hub downloads for a launch.",
                413,
            )
        declared = sum(f.size or 0 for f in files)
        if declared > self.archive_max_bytes:
            raise ArchiveError(
                f"This record has {_megabytes(declared)} of files, more than the "
                f"{_megabytes(self.archive_max_bytes)} this hub downloads for a launch.",
                413,
            )
        for f in files:
            archivefiles.safe_parts(f.name)

    async def _download_file(self, client, dir_fd, record_file, before):
        hasher = hashlib.new(record_file.checksum[0]) if record_file.checksum else None
        size = 0
        limit = self.archive_max_bytes

        with archivefiles.create_file(dir_fd, record_file.name) as out:

            def sink(chunk):
                nonlocal size
                size += len(chunk)
                if before + size > limit:
                    raise ArchiveError(
                        f"This record's files are larger than the {_megabytes(limit)} "
                        "this hub downloads for a launch.",
                        413,
                    )
                if hasher is not None:
                    hasher.update(chunk)
                out.write(chunk)

            await client.get(
                record_file.url, f"the file {record_file.name}", sink=sink, accept="*/*"
            )
        if record_file.size is not None and size != record_file.size:
            raise ArchiveError(
                f"The file {record_file.name} arrived with {size} bytes, not the "
                f"{record_file.size} the archive lists. Try again later.",
                502,
            )
        if hasher is not None and hasher.hexdigest() != record_file.checksum[1]:
            raise ArchiveError(
                f"The file {record_file.name} does not match the archive's "
                f"{record_file.checksum[0]} checksum. Try again later.",
                502,
            )
        return size
