"""Zenodo and Figshare records: links, resolution held against BinderHub, network rules, downloads.

The archives are served on loopback by :mod:`tests.archiveserver` (a DOI
resolver that redirects, Zenodo, Figshare's site and API, a storage host);
the policy is pointed at them by configuration only.
"""

import asyncio
import hashlib
import ipaddress
import os
import socket
import struct
import tempfile
import tracemalloc
import zlib
from urllib.parse import quote

import escapism
import pytest
from repo2docker.__main__ import get_argparser

from binder_service.metrics import LaunchEventLog, provider_name
from binder_spawner import build
from binder_spawner.archives import ArchiveError
from binder_spawner.images import image_name
from binder_spawner.repos import RepoPolicy, ResolveCache, SpecError

from .archiveserver import Archives, md5, zip_bytes

HS_ID = "8f7c2f0341ef4180b0dbe97f59130756"


@pytest.fixture(scope="module")
def archives():
    servers = Archives()
    yield servers
    servers.stop()


def policy_for(archives, **extra):
    return RepoPolicy(**{**archives.policy_config(), **extra}, resolve_cache=ResolveCache())


def binderhub_image(build_slug, ref, prefix=""):
    """BinderHub's image name (builder.py b9fad99 L117-128 ``_safe_build_slug``, L417-423)."""
    safe = escapism.escape(build_slug, escape_char="-")
    digest = hashlib.sha256(build_slug.encode("utf-8")).hexdigest()[:6]
    limit = 255 - len(prefix)
    slug = f"{safe[: limit - 7]}-{digest}".lower()
    return f"{prefix}{slug}:{ref}".replace("_", "-").lower()


# -- links (pure) ---------------------------------------------------------------


@pytest.mark.parametrize(
    "link, spec",
    [
        pytest.param("zenodo/10.5281/zenodo.3242074", "zenodo/10.5281/zenodo.3242074", id="spec"),
        pytest.param("v2/zenodo/10.5281/zenodo.3242074", "zenodo/10.5281/zenodo.3242074", id="v2"),
        pytest.param("10.5281/zenodo.3242074", "zenodo/10.5281/zenodo.3242074", id="bare-doi"),
        pytest.param("doi:10.5281/zenodo.3242074", "zenodo/10.5281/zenodo.3242074", id="doi-colon"),
        pytest.param(
            "https://doi.org/10.5281/zenodo.3242074", "zenodo/10.5281/zenodo.3242074", id="doi-url"
        ),
        pytest.param(
            "https://zenodo.org/records/3242074", "zenodo/10.5281/zenodo.3242074", id="record"
        ),
        pytest.param("zenodo.org/record/3242074", "zenodo/10.5281/zenodo.3242074", id="old-record"),
        pytest.param(
            "figshare/10.6084/m9.figshare.9782777.v1",
            "figshare/10.6084/m9.figshare.9782777.v1",
            id="figshare-spec",
        ),
        pytest.param(
            "10.6084/m9.figshare.9782777", "figshare/10.6084/m9.figshare.9782777", id="figshare-doi"
        ),
        pytest.param(
            "https://figshare.com/articles/dataset/binder_example/9782777/2",
            "figshare/10.6084/m9.figshare.9782777.v2",
            id="figshare-article",
        ),
        pytest.param(
            "https://figshare.com/articles/binder-examples_requirements/9784088",
            "figshare/10.6084/m9.figshare.9784088",
            id="figshare-untyped-article",
        ),
        pytest.param("10.7910/DVN/TJCLKP", "dataverse/10.7910/DVN/TJCLKP", id="harvard-doi"),
        pytest.param("dataverse/10.34894/ABCDEF", "dataverse/10.34894/ABCDEF", id="dataverse-spec"),
        pytest.param(
            "https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/TJCLKP",
            "dataverse/10.7910/DVN/TJCLKP",
            id="dataverse-page",
        ),
        pytest.param(
            "https://dataverse.harvard.edu/citation?persistentId=doi:10.7910/DVN/TJCLKP",
            "dataverse/10.7910/DVN/TJCLKP",
            id="dataverse-citation",
        ),
        pytest.param(f"hydroshare/{HS_ID}", f"hydroshare/{HS_ID}", id="hydroshare"),
        pytest.param(
            f"https://www.hydroshare.org/resource/{HS_ID}/", f"hydroshare/{HS_ID}", id="hs-page"
        ),
        pytest.param(f"10.4211/hs.{HS_ID}", f"hydroshare/{HS_ID}", id="hs-doi"),
    ],
)
def test_archive_links(link, spec):
    parsed = RepoPolicy().parse(link)
    assert parsed.spec == spec
    assert parsed.provider == spec.split("/", 1)[0]
    if parsed.provider == "hydroshare":  # BinderHub's get_repo_url: the resource page
        assert parsed.repo_url == f"https://www.hydroshare.org/resource/{HS_ID}"
    else:  # BinderHub's get_repo_url: the DOI
        assert parsed.repo_url == spec.split("/", 1)[1]
    assert parsed.ref == "" and parsed.commit is None
    assert parsed.repo_key == spec.lower()


@pytest.mark.parametrize(
    "link, message",
    [
        pytest.param("zenodo/not-a-doi", 'looks like "zenodo/<DOI>"', id="zenodo-syntax"),
        pytest.param("figshare/10.6084/figshare", "not a Figshare DOI", id="figshare-fields"),
        pytest.param("figshare/10.6084/m9.figshare.abc", "article number", id="figshare-id"),
        pytest.param("figshare/10.6084/m9.figshare.1.vX", "version", id="figshare-version"),
        pytest.param("10.1234/unknown.1", "not one this hub knows", id="unknown-registrant"),
        pytest.param("https://zenodo.org/communities/x", "does not point to a record", id="page"),
        pytest.param({"repo": "10.5281/zenodo.1", "ref": "main"}, "no branches", id="ref"),
        pytest.param("zenodo/10.5281/zenodo.1%0a", 'looks like "zenodo/<DOI>"', id="newline"),
        pytest.param(
            "https://dataverse.harvard.edu/dataverse/harvard",
            "not point to a dataset",
            id="dv-page",
        ),
        pytest.param("hydroshare/not-an-id", 'looks like "hydroshare/<resource id>"', id="hs"),
    ],
)
def test_bad_archive_links_are_refused(link, message):
    with pytest.raises(SpecError) as e:
        RepoPolicy().parse(link)
    assert message in e.value.message
    assert e.value.status_code == 400


def test_providers_can_be_turned_off_and_banned():
    policy = RepoPolicy(allowed_providers={"gh"})
    with pytest.raises(SpecError) as e:
        policy.parse("10.5281/zenodo.3242074")
    assert e.value.status_code == 403 and "Zenodo is not enabled" in e.value.message
    policy = RepoPolicy(banned_specs=["^zenodo/10.5281/zenodo.666$"])
    with pytest.raises(SpecError):
        policy.parse("https://zenodo.org/records/666")
    assert policy.parse("https://zenodo.org/records/667").spec == "zenodo/10.5281/zenodo.667"


def test_launch_events_carry_binderhub_provider_names():
    spec = RepoPolicy().parse("10.6084/m9.figshare.9782777.v1")
    event = LaunchEventLog().event(spec, "success")
    # BinderHub's event-schemas/launch.json enum and its spec without the provider
    assert (event["provider"], event["spec"]) == ("Figshare", "10.6084/m9.figshare.9782777.v1")
    assert provider_name("zenodo") == "Zenodo"


# -- held against BinderHub ------------------------------------------------------


async def test_resolution_image_and_build_argument_match_binderhub(archives):
    """For the same API answers, what BinderHub's providers give (repoproviders.py b9fad99).

    Zenodo L273-301: record id = last segment of the URL the DOI finally
    leads to; resolved spec = DOI up to "zenodo" + "zenodo.<id>"; slug
    "zenodo-<id>". Figshare L323-380: "<article>.v<version>", the latest
    version from the API when the DOI has none; slug "figshare-<ref>".
    build.py L175-188: repo2docker gets --ref=<resolved ref> and, last, the
    DOI as given (get_repo_url).
    """
    concept = archives.zenodo_record("5100", {"a.txt": b"a"}, doi="10.5281/zenodo.5099")
    archives.figshare_article("7700", {1: {"a.txt": b"1"}, 3: {"a.txt": b"3"}})
    archives.dataverse_dataset("10.7910/DVN/TJCLKP", 3035124, (3, 1), {"a.txt": b"a"})
    policy = policy_for(archives)
    table = [
        # (link, resolved ref, resolved spec, build slug, repo2docker argument)
        (concept, "5100", "10.5281/zenodo.5100", "zenodo-5100", concept),
        (
            "10.5281/zenodo.5100",
            "5100",
            "10.5281/zenodo.5100",
            "zenodo-5100",
            "10.5281/zenodo.5100",
        ),
        (
            "10.6084/m9.figshare.7700",
            "7700.v3",
            "10.6084/m9.figshare.7700.v3",
            "figshare-7700.v3",
            "10.6084/m9.figshare.7700",
        ),
        (
            "figshare/10.6084/m9.figshare.7700.v1",
            "7700.v1",
            "10.6084/m9.figshare.7700.v1",
            "figshare-7700.v1",
            "10.6084/m9.figshare.7700.v1",
        ),
    ]
    # Dataverse L389-439: "<data.id>.v<major>.<minor>" of latestVersion, resolved spec
    # "<authority>/<identifier>", slug "dataverse-" + escapism.escape(identifier, "-").lower()
    table.append(
        (
            "10.7910/DVN/TJCLKP",
            "3035124.v3.1",
            "10.7910/DVN/TJCLKP",
            "dataverse-dvn-2ftjclkp",
            "10.7910/DVN/TJCLKP",
        )
    )
    # HydroShare L441-500: "<id>.v<epoch of the modified date, to the second>"; the
    # repository URL is the resolved spec and the ref URL; slug "hydroshare-<ref>"
    archives.hydroshare_resource(HS_ID, {"a.txt": b"a"})
    page = f"https://www.hydroshare.org/resource/{HS_ID}"
    table.append(
        (
            f"hydroshare/{HS_ID}",
            f"{HS_ID}.v1569344016",
            page,
            f"hydroshare-{HS_ID}.v1569344016",
            page,
        )
    )
    prefix = "registry.example.org/binder-"
    for link, ref, resolved, slug, argument in table:
        spec = await policy.resolve(policy.parse(link))
        assert (spec.commit, spec.resolved_spec, spec.build_slug) == (ref, resolved, slug), link
        # get_resolved_ref_url: the DOI's page, Dataverse's persistentUrl, HydroShare's page
        assert spec.ref_url in (f"https://doi.org/{resolved}", page), link
        image = image_name(spec, spec.commit, prefix=prefix)
        assert image == binderhub_image(slug, ref, prefix), link
        command = build.repo2docker_command(spec.repo_url, spec.commit, image)
        args = get_argparser().parse_args(command[1:])
        assert (args.repo, args.ref, args.image_name) == (argument, ref, image)
    assert (
        binderhub_image("zenodo-5100", "5100")
        == "zenodo-2d5100-" + hashlib.sha256(b"zenodo-5100").hexdigest()[:6] + ":5100"
    )


async def test_dataverse_doi_of_another_installation_is_refused(archives):
    archives.doi.redirect("/10.7910/DVN/OTHER", archives.zenodo.url + "/citation?persistentId=x")
    archives.zenodo.route("/citation", body=b"page")
    policy = policy_for(archives)
    with pytest.raises(SpecError) as e:
        await policy.resolve(policy.parse("10.7910/DVN/OTHER"))
    assert "does not lead to a Dataverse record" in e.value.message


async def test_resolution_is_cached_and_shared(archives):
    archives.zenodo_record("5200", {"a.txt": b"a"})
    policy = policy_for(archives)
    spec = policy.parse("10.5281/zenodo.5200")
    first, second = await asyncio.gather(policy.resolve(spec), policy.resolve(spec))
    assert first.commit == second.commit == "5200"
    await policy.resolve(spec)
    assert archives.doi.hits["/10.5281/zenodo.5200"] == 1
    policy.clock = lambda: 1e9  # past the cache's lifetime
    await policy.resolve(spec)
    assert archives.doi.hits["/10.5281/zenodo.5200"] == 2


# -- errors and network rules ----------------------------------------------------


@pytest.mark.parametrize(
    "status, headers, code, message",
    [
        pytest.param(404, {}, 404, "was not found", id="404"),
        pytest.param(410, {}, 410, "withdrawn or deleted", id="410"),
        pytest.param(429, {"Retry-After": "30"}, 429, "Try again in 30 seconds", id="429"),
        pytest.param(503, {}, 502, "error (HTTP 503)", id="5xx"),
    ],
)
async def test_archive_errors_are_clear(archives, status, headers, code, message):
    record = str(5300 + status)
    archives.zenodo_record(record, {"a.txt": b"a"})
    archives.zenodo.route(f"/records/{record}", status=status, headers=headers, body=b"no")
    with pytest.raises(SpecError) as e:
        await policy_for(archives).resolve(policy_for(archives).parse(f"10.5281/zenodo.{record}"))
    assert e.value.status_code == code and message in e.value.message


async def test_unknown_doi_is_not_found(archives):
    with pytest.raises(SpecError) as e:
        policy = policy_for(archives)
        await policy.resolve(policy.parse("10.5281/zenodo.404404"))
    assert e.value.status_code == 404 and "not found" in e.value.message


async def test_doi_leading_elsewhere_is_refused(archives):
    archives.doi.redirect("/10.5281/zenodo.5400", archives.figshare.url + "/records/5400")
    archives.figshare.route("/records/5400", body=b"page")
    with pytest.raises(SpecError) as e:
        policy = policy_for(archives)
        await policy.resolve(policy.parse("10.5281/zenodo.5400"))
    assert "does not lead to a Zenodo record" in e.value.message


@pytest.mark.parametrize(
    "location, message",
    [
        pytest.param(
            "http://127.0.0.2:{port}/records/1", "loopback address", id="loopback-literal"
        ),
        pytest.param("http://0x7f.1:1/records/1", "loopback address", id="hex-loopback"),
        pytest.param("http://10.0.0.1/records/1", "private address", id="private"),
        pytest.param("http://169.254.169.254/latest/", "link-local", id="metadata"),
        pytest.param("http://localhost:{port}/records/1", "this machine", id="localhost"),
        pytest.param("file:///etc/passwd", "URLs are followed", id="file-scheme"),
        pytest.param("http://user:pw@zenodo.org/records/1", "user name or password", id="creds"),
    ],
)
async def test_every_redirect_hop_is_checked(archives, location, message):
    """The DOI resolver's answer is a stranger's URL: checked as a repository URL would be."""
    doi = f"10.5281/zenodo.55{zlib.crc32(location.encode()) % 1000}"
    archives.doi.redirect(f"/{doi}", location.format(port=archives.zenodo.url.rsplit(":", 1)[1]))
    policy = policy_for(archives)
    with pytest.raises(SpecError) as e:
        await policy.resolve(policy.parse(doi))
    assert message in e.value.message
    assert e.value.status_code in (403, 502)


async def test_a_name_resolving_to_a_private_address_is_refused(archives):
    """The address check happens at connection time, on what DNS answered (no rebinding)."""
    name = socket.gethostname()
    addresses = {info[4][0] for info in socket.getaddrinfo(name, 80, type=socket.SOCK_STREAM)}
    assert addresses and not any(ipaddress.ip_address(a).is_global for a in addresses)
    port = archives.zenodo.url.rsplit(":", 1)[1]
    archives.doi.redirect("/10.5281/zenodo.5600", f"http://{name}:{port}/records/5600")
    policy = policy_for(archives)
    with pytest.raises(SpecError) as e:
        await policy.resolve(policy.parse("10.5281/zenodo.5600"))
    assert "resolves to a" in e.value.message and e.value.status_code == 403
    # the same name, trusted by the admin, is contacted (and is not Zenodo's host)
    trusted = policy_for(
        archives, allowed_hosts=[*archives.policy_config()["allowed_hosts"], f"{name}:{port}"]
    )
    archives.zenodo.route("/records/5600", body=b"page")
    with pytest.raises(SpecError) as e:
        await trusted.resolve(trusted.parse("10.5281/zenodo.5600"))
    assert "does not lead to a Zenodo record" in e.value.message


async def test_too_many_redirects(archives):
    archives.doi.redirect("/10.5281/zenodo.5700", "/10.5281/zenodo.5700")
    policy = policy_for(archives)
    with pytest.raises(SpecError) as e:
        await policy.resolve(policy.parse("10.5281/zenodo.5700"))
    assert "too many times" in e.value.message


# -- downloads -----------------------------------------------------------------------


async def download(policy, link):
    spec = await policy.resolve(policy.parse(link))
    dest = tempfile.mkdtemp()
    lines = []
    await asyncio.to_thread(
        policy.download_record, spec.provider, spec.resolution, dest, lines.append
    )
    return dest, lines


def tree(path):
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                found[os.path.relpath(full, path)] = f.read()
    return found


async def test_zenodo_files_are_downloaded_and_checked(archives):
    files = {"requirements.txt": b"six\n", "data/values.csv": b"1,2\n"}
    archives.zenodo_record("6100", files)
    dest, lines = await download(policy_for(archives), "10.5281/zenodo.6100")
    assert tree(dest) == files
    assert "Downloading data/values.csv (4 bytes)" in lines


async def test_a_single_zip_is_unpacked_and_its_top_folder_flattened(archives):
    archive = zip_bytes({"repo-main/requirements.txt": b"six\n", "repo-main/repo-main": b"same"})
    archives.figshare_article("6200", {1: {"repo.zip": archive}})
    dest, lines = await download(policy_for(archives), "10.6084/m9.figshare.6200.v1")
    # the link-only file of the listing is not downloaded; the zip is gone, its folder flattened
    assert tree(dest) == {"requirements.txt": b"six\n", "repo-main": b"same"}
    assert archives.storage.hits  # downloads went through Figshare's redirect to storage


async def test_checksum_mismatch_is_refused(archives):
    archives.zenodo_record("6300", {"a.txt": b"real"}, checksums={"a.txt": "md5:" + md5(b"fake")})
    with pytest.raises(ArchiveError) as e:
        await download(policy_for(archives), "10.5281/zenodo.6300")
    assert "does not match the archive's md5 checksum" in e.value.message


async def test_oversized_record_is_refused_before_downloading(archives):
    archives.zenodo_record("6400", {"big.bin": 3 * 1024**2})
    policy = policy_for(archives, archive_max_bytes=1024**2)
    with pytest.raises(ArchiveError) as e:
        await download(policy, "10.5281/zenodo.6400")
    assert e.value.status_code == 413
    assert "has 3 MB of files, more than the 1 MB this hub downloads" in e.value.message
    assert archives.zenodo.hits["/api/records/6400/files/big.bin/content"] == 0


async def test_download_larger_than_listed_is_stopped(archives):
    """A listing that lies about sizes: the stream is cut at the cap."""
    archives.zenodo_record("6500", {"big.bin": 8 * 1024**2}, sizes={"big.bin": 10})
    policy = policy_for(archives, archive_max_bytes=1024**2)
    with pytest.raises(ArchiveError) as e:
        await download(policy, "10.5281/zenodo.6500")
    assert e.value.status_code == 413 and "larger than the 1 MB" in e.value.message


@pytest.mark.parametrize(
    "entries, message",
    [
        pytest.param({"../evil.txt": b"x"}, "leads outside its folder", id="dotdot"),
        pytest.param({"a/../../evil.txt": b"x"}, "leads outside its folder", id="inner-dotdot"),
        pytest.param({"/etc/evil": b"x"}, "absolute path", id="absolute"),
        pytest.param({"link": ("link", "/etc/passwd")}, "holds a link", id="symlink"),
        pytest.param({"a\\..\\b": b"x"}, "not allowed", id="backslash"),
    ],
)
async def test_malicious_zips_are_refused_whole(archives, entries, message):
    record = str(6600 + zlib.crc32(repr(entries).encode()) % 300)
    archives.zenodo_record(record, {"r.zip": zip_bytes({"ok.txt": b"ok", **entries})})
    with pytest.raises(ArchiveError) as e:
        spec_dir = await download(policy_for(archives), f"10.5281/zenodo.{record}")
        pytest.fail(f"unpacked: {spec_dir}")
    assert message in e.value.message


async def test_zip_bomb_is_refused(archives):
    bomb = zip_bytes({"zeros.bin": b"\0" * (64 * 1024**2)})
    assert len(bomb) < 200 * 1024
    archives.zenodo_record("6950", {"bomb.zip": bomb})
    policy = policy_for(archives, archive_max_unpacked_bytes=16 * 1024**2)
    with pytest.raises(ArchiveError) as e:
        await download(policy, "10.5281/zenodo.6950")
    assert e.value.status_code == 413 and "unpacks to 64 MB" in e.value.message


def zip_listing(count):
    """A zip whose central directory lists the same empty file ``count`` times (47 bytes each)."""
    one = zip_bytes({"a": b""})
    _, _, _, _, _, size, offset, _ = struct.unpack("<4s4H2LH", one[-22:])
    directory = one[offset : offset + size] * count
    total = min(count, 0xFFFF)
    end = struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, total, total, len(directory), offset, 0)
    return one[:offset] + directory + end


async def test_zip_listing_too_many_entries_is_refused_before_zipfile_reads_it(archives):
    # every entry of a zip's directory becomes an object of the hub's process when
    # zipfile reads it: 14 MB of entries took 130 MB, a 1 GB zip (the download cap) 9 GB
    archives.zenodo_record("6970", {"many.zip": zip_listing(300_000)})
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError) as e:
            await download(policy_for(archives), "10.5281/zenodo.6970")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # the download (1 MB at a time) and at most the 10001 headers counted
    assert peak < 16 * 1024**2, peak
    assert e.value.status_code == 413
    assert e.value.message == (
        "The record's archive holds more than the 10000 entries this hub unpacks."
    )


async def test_file_names_from_the_listing_cannot_escape(archives):
    archives.zenodo_record("6960", {"ok.txt": b"ok"})
    archives.zenodo.route(
        "/api/records/6960/files",
        json_body={
            "entries": [
                {
                    "key": "../../escape.txt",
                    "size": 1,
                    "links": {"content": archives.zenodo.url + "/x"},
                }
            ]
        },
    )
    with pytest.raises(ArchiveError) as e:
        await download(policy_for(archives), "10.5281/zenodo.6960")
    assert "leads outside its folder" in e.value.message


async def test_dataverse_files_come_page_by_page_with_their_folders(archives):
    files = {f"code/part{i}.py": f"print({i})\n".encode() for i in range(5)}
    files["requirements.txt"] = b"six\n"
    archives.dataverse_dataset("10.7910/DVN/PAGES1", 4242, (1, 0), files)
    dest, _ = await download(policy_for(archives), "10.7910/DVN/PAGES1")
    assert tree(dest) == files
    # six files, at most two per page: three pages
    assert archives.dataverse.hits["/api/datasets/4242/versions/1.0/files"] == 3


async def test_hydroshare_bag_contents_are_unpacked(archives):
    resource = "0123456789abcdef0123456789abcdef"
    files = {"requirements.txt": b"six\n", "notebooks/run.ipynb": b"{}"}
    archives.hydroshare_resource(resource, files, modified="2023-05-02T10:11:12.5Z")
    policy = policy_for(archives)
    spec = await policy.resolve(policy.parse(f"hydroshare/{resource}"))
    assert spec.commit == f"{resource}.v1683022272"
    dest, lines = await download(policy, f"hydroshare/{resource}")
    # only data/contents of the bag, without the BagIt files around it
    assert tree(dest) == files


async def test_bag_still_being_prepared(archives):
    resource = "fedcba9876543210fedcba9876543210"
    archives.hydroshare_resource(resource, {"a.txt": b"a"})
    archives.hydroshare.route(f"/hsapi/resource/{resource}/", status=202, body=b"preparing")
    with pytest.raises(ArchiveError) as e:
        await download(policy_for(archives), f"hydroshare/{resource}")
    assert e.value.status_code == 503 and "still preparing" in e.value.message


# -- CKAN ------------------------------------------------------------------------------


async def test_ckan_dataset_matches_binderhub_and_downloads_its_resources(archives):
    """BinderHub CKANProvider (repoproviders.py b9fad99 L503-570), for the same answers."""
    files = {"requirements.txt": b"six\n", "data.csv": b"1,2\n"}
    url = archives.ckan_dataset("sample-1", files, prefix="/portal")
    policy = policy_for(archives)
    spec = await policy.resolve(policy.parse("ckan/" + quote(url, safe="")))
    assert spec.repo_url == spec.resolved_spec == spec.ref_url == url
    assert (spec.commit, spec.build_slug) == ("sample-1.v1683022272", "ckan-sample-1")
    image = image_name(spec, spec.commit, prefix="r/")
    assert image == binderhub_image("ckan-sample-1", "sample-1.v1683022272", "r/")
    args = get_argparser().parse_args(build.repo2docker_command(url, spec.commit, image)[1:])
    assert (args.repo, args.ref) == (url, "sample-1.v1683022272")
    dest, _ = await download(policy, "ckan/" + quote(url, safe=""))
    # the resource without a URL is skipped, as repo2docker does
    assert tree(dest) == files


async def test_ckan_history_link_resolves_to_that_activity(archives):
    url = archives.ckan_dataset(
        "sample-2", {"a.txt": b"a"}, activity=("act-1", "2021-01-01T00:00:00.000001")
    )
    policy = policy_for(archives)
    spec = await policy.resolve(policy.parse("ckan/" + quote(f"{url}/history/act-1", safe="")))
    assert spec.commit == "sample-2.v1609459200"
    spec = await policy.resolve(policy.parse("ckan/" + quote(f"{url}?activity_id=act-1", safe="")))
    assert spec.commit == "sample-2.v1609459200"


def test_ckan_hosts_can_be_restricted(archives):
    policy = policy_for(archives, archive_hosts={"ckan": ["data.example.org"]})
    assert policy.parse("ckan/https%3A%2F%2Fdata.example.org%2Fdataset%2Fx").provider == "ckan"
    with pytest.raises(SpecError) as e:
        policy.parse("ckan/https%3A%2F%2Fdemo.ckan.org%2Fdataset%2Fx")
    assert e.value.status_code == 403 and "on demo.ckan.org cannot be launched" in e.value.message
    with pytest.raises(SpecError) as e:
        RepoPolicy().parse("ckan/https%3A%2F%2F10.1.2.3%2Fdataset%2Fx")
    assert "private address" in e.value.message


# -- Software Heritage ---------------------------------------------------------------

DIR = "d" * 40
REV = "e" * 40


def test_swhid_is_off_by_default_and_read_when_enabled():
    with pytest.raises(SpecError) as e:
        RepoPolicy().parse(f"swh:1:dir:{DIR}")
    assert e.value.status_code == 403 and "Software Heritage is not enabled" in e.value.message
    policy = RepoPolicy(allowed_providers={"swhid"})
    assert policy.parse(f"swh:1:rev:{REV};origin=https://example.org").spec == (
        f"swhid/swh:1:rev:{REV}"
    )
    assert policy.parse(f"v2/swhid/swh:1:dir:{DIR}").repo_url == f"swh:1:dir:{DIR}"
    with pytest.raises(SpecError) as e:
        policy.parse("swhid/swh:1:cnt:" + "0" * 40)
    assert "(a directory)" in e.value.message


async def test_swhid_revision_resolves_and_its_directory_is_downloaded(archives):
    files = {"requirements.txt": b"six\n", "src/main.py": b"print(1)\n"}
    archives.swh_directory(DIR, files, revision=REV, links={"src/link.py": "main.py"})
    policy = policy_for(archives, allowed_providers={"swhid"})
    spec = await policy.resolve(policy.parse(f"swh:1:rev:{REV}"))
    # immutable: the identifier is its own version; repo2docker gets the identifier
    assert (spec.commit, spec.resolved_spec) == (REV, f"swh:1:rev:{REV}")
    image = image_name(spec, spec.commit)
    assert image == binderhub_image(f"swhid-swh:1:rev:{REV}", REV)
    args = get_argparser().parse_args(build.repo2docker_command(spec.repo_url, REV, image)[1:])
    assert (args.repo, args.ref) == (f"swh:1:rev:{REV}", REV)
    dest, lines = await download(policy, f"swh:1:rev:{REV}")
    assert tree(dest) == {**files, "src/link.py": b"print(1)\n"}
    assert os.readlink(os.path.join(dest, "src/link.py")) == "main.py"
    assert any("packing" in line for line in lines)


@pytest.mark.parametrize(
    "files, links, message",
    [
        pytest.param(
            {"a.txt": b"a"}, {"evil": "../../etc/passwd"}, "link leading outside", id="up"
        ),
        pytest.param({"a.txt": b"a"}, {"evil": "/etc/passwd"}, "link leading outside", id="abs"),
        pytest.param({"../x.txt": b"x"}, {}, "leads outside its folder", id="dotdot"),
    ],
)
async def test_malicious_tarballs_are_refused(archives, files, links, message):
    directory = "%040x" % zlib.crc32(repr((files, links)).encode())
    archives.swh_directory(directory, files, links=links)
    policy = policy_for(archives, allowed_providers={"swhid"})
    with pytest.raises(ArchiveError) as e:
        await download(policy, f"swh:1:dir:{directory}")
    assert message in e.value.message


async def test_a_download_that_trickles_is_cut_off(archives):
    """A server that never finishes sending: the file's download time is bounded."""
    archives.zenodo_record("7900", {"slow.bin": 1000})
    archives.zenodo.route("/api/records/7900/files/slow.bin/content", size=-1000)
    policy = policy_for(archives, archive_download_timeout=0.5)
    with pytest.raises(ArchiveError) as e:
        await download(policy, "10.5281/zenodo.7900")
    assert e.value.status_code == 504 and "Timed out or cut off" in e.value.message
