"""Local mode launches of archived records through a real hub, proxy and service.

One hub for the module, pointed by configuration at a DOI resolver, Zenodo
and Figshare served on loopback (:mod:`tests.archiveserver`): a Zenodo
record and a Figshare article launch with their files in the home, a
second launch reuses the environment without downloading again, a
withdrawn and an oversized record are refused with their reasons.
"""

import json

import pytest
import pytest_asyncio

from .archiveserver import Archives, zip_bytes
from .localhub import local_hub_session

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOTEBOOK = json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}).encode()
#: the home's files, without the dotfiles the server makes
LIST_HOME = "import os; print(sorted(n for n in os.listdir('.') if not n.startswith('.')))"
#: the most a record may weigh on this hub
MAX_BYTES = 1024**2


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def local(tmp_path_factory, request):
    archives = Archives()
    settings = archives.policy_config()
    extra = "".join(
        f"c.RepoPolicy.{key} = {value!r}\n"
        for key, value in settings.items()
        if key != "allowed_hosts"
    )
    # the git server's host (from BINDER_ALLOWED_HOSTS) and the archives' hosts
    extra += (
        f"c.RepoPolicy.allowed_hosts = c.RepoPolicy.allowed_hosts + {settings['allowed_hosts']!r}\n"
    )
    extra += f"c.RepoPolicy.archive_max_bytes = {MAX_BYTES}\n"
    try:
        async with local_hub_session(
            tmp_path_factory, request, "archives-hub", extra_config=extra
        ) as local:
            local.archives = archives
            yield local
    finally:
        archives.stop()


def messages(events):
    return [event.get("message", "") for event in events]


async def test_zenodo_record_launches_and_relaunches(local):
    archives = local.archives
    files = {
        "requirements.txt": b"six==1.17.0\n",
        "analysis.ipynb": NOTEBOOK,
        "data/values.csv": b"1,2\n",
    }
    concept = archives.zenodo_record("7100", files, doi="10.5281/zenodo.7099")
    events = await local.launch("zoe", {"repo": concept, "urlpath": "lab"})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert "Resolving the Zenodo record 10.5281/zenodo.7099" in lines
    assert any(line.startswith("Downloading data/values.csv") for line in lines), lines
    out = await local.run_code(
        "zoe",
        "import os, six\n"
        "print(sorted(n for n in os.listdir('.') if not n.startswith('.')), open('data/values.csv').read().strip())\n"
        "print(os.environ['BINDER_REPO_URL'], os.environ['BINDER_PERSISTENT_REQUEST'],"
        " os.environ['BINDER_REF_URL'])\n",
    )
    listing, binder = out.strip().splitlines()
    assert listing == "['analysis.ipynb', 'data', 'requirements.txt'] 1,2"
    # BinderHub's values for a Zenodo record: the DOI as given, the resolved version
    assert binder.split() == [
        "10.5281/zenodo.7099",
        "v2/zenodo/10.5281/zenodo.7100",
        "https://doi.org/10.5281/zenodo.7100",
    ]
    downloads = archives.zenodo.hits["/api/records/7100/files/data/values.csv/content"]
    assert downloads == 1

    # the record's own page, by another visitor: the same version, the same environment
    events = await local.launch("zed", {"repo": f"{archives.zenodo.url}/records/7100"})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert any("Reusing the environment" in line for line in lines), lines
    assert archives.zenodo.hits["/api/records/7100/files/data/values.csv/content"] == 1
    out = await local.run_code("zed", LIST_HOME)
    assert out.strip() == "['analysis.ipynb', 'data', 'requirements.txt']"
    await local.stop("zed")
    await local.stop("zoe")


async def test_figshare_article_launches_from_its_zip(local):
    archive = zip_bytes({"paper-code/index.ipynb": NOTEBOOK, "paper-code/README.md": b"# paper"})
    doi = local.archives.figshare_article("8100", {1: {"paper-code.zip": archive}})
    events = await local.launch("fay", {"repo": f"{doi}.v1"})
    lines = messages(events)
    assert events[-1].get("ready"), lines
    assert "Unpacking paper-code.zip" in lines
    out = await local.run_code("fay", LIST_HOME)
    # unpacked, its single top folder flattened, the link-only entry not fetched
    assert out.strip() == "['README.md', 'index.ipynb']"
    await local.stop("fay")


async def test_withdrawn_and_oversized_records_are_refused(local):
    archives = local.archives
    archives.zenodo_record("9100", {"a.ipynb": NOTEBOOK})
    archives.withdraw_zenodo("9100")
    events = await local.launch("walt", {"repo": "10.5281/zenodo.9100"})
    assert events[-1].get("failed"), messages(events)
    assert "has been withdrawn or deleted by the archive" in events[-1]["message"]

    archives.zenodo_record("9200", {"huge.bin": 3 * MAX_BYTES, "a.ipynb": NOTEBOOK})
    events = await local.launch("olga", {"repo": "10.5281/zenodo.9200"})
    assert events[-1].get("failed"), messages(events)
    assert (
        "This record has 3 MB of files, more than the 1 MB this hub downloads for a launch."
        in events[-1]["message"]
    )
    assert archives.zenodo.hits["/api/records/9200/files/huge.bin/content"] == 0
