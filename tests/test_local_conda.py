"""Local mode builds conda environments (environment.yml) with rattler, in the build sandbox.

The packages come from a real conda channel the tests make and serve on
loopback (:mod:`tests.condachannel`), configured as a site would configure a
mirror (``conda_channel_alias`` and ``conda_channels``). Builder-level tests
here; launches through a hub in ``test_local_conda_hub.py``.
"""

import os
import shutil

import pytest

from binder_spawner.localbuild import BuildError
from binder_spawner.localplan import UnsupportedRepository

from .condachannel import CHANNEL, PLACEHOLDER, ChannelServer, cached_channel, host_python
from .localhub import build_lines, reachable_build_root, read
from .localhub import make_builder as make_local_builder

pytestmark = pytest.mark.asyncio(loop_scope="module")

SMALL_PACKAGE = "six==1.17.0"


@pytest.fixture(scope="module")
def channel():
    server = ChannelServer(cached_channel()).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def build_root():
    root = reachable_build_root("binder-conda-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def git(module_git_server):
    return module_git_server


def make_builder(root, channel, **kwargs):
    return make_local_builder(
        root, conda_channel_alias=channel.url, conda_channels=[CHANNEL], **kwargs
    )


def exists(*parts):
    return os.path.exists(os.path.join(*parts))


CONDA_REPO = {
    "binder/environment.yml": "name: ignored\nchannels: [binderforge]\ndependencies:\n"
    "  - binderlib >=2\n  - pip:\n    - -r pip-extra.txt\n",
    # relative to the environment file's folder, as conda resolves it
    "binder/pip-extra.txt": SMALL_PACKAGE + "\n",
    "binder/postBuild": "#!/bin/bash\nset -e\n"
    'echo "postBuild: $BINDERTOOL_ACTIVE $BINDERTOOL_LEVEL $BINDERTOOL_HOME $CONDA_PREFIX"\n'
    "python -c 'import binderlib, six; print(\"imports\", binderlib.VERSION, six.__version__)'\n",
    # not read: the binder folder wins
    "requirements.txt": "this-package-does-not-exist-binder-test\n",
}


async def test_conda_environment_built_sealed_and_activated(git, build_root, channel):
    url = git.create_repo("org/conda-env", CONDA_REPO)
    builder = make_builder(build_root, channel)
    task = builder.build(url, git.sha("org/conda-env"))
    lines = await build_lines(task)
    text = "\n".join(lines)
    env = await task.result()
    assert env.kind == "conda", text
    assert "Creating the conda environment of binder/environment.yml" in text
    assert "Solved 3 conda packages" in text
    assert "  bindertool 0.3 h0_0" in text
    # the pip: section went in with uv, from the package index
    assert any(SMALL_PACKAGE in line for line in lines), text
    # postBuild ran in the activated environment: env_vars.d, then activate.d
    assert "postBuild: yes 3 /srv/binder/venv/share/bindertool /srv/binder/venv" in lines, text
    assert "imports 2.0 1.17.0" in lines
    # conda's prefix replacement: the build placeholder became the prefix
    assert read(env.venv, "share/bindertool/where.txt") == "/srv/binder/venv/share/bindertool\n"
    assert PLACEHOLDER not in read(env.venv, "share/bindertool/where.txt")
    assert exists(env.venv, "share/jupyter/kernels/bindertool/kernel.json")
    assert env.python_version == host_python()[1]
    # sealed like any environment: root's, read-only
    for path in (env.venv, os.path.join(env.venv, "conda-meta"), env.repo_dir):
        st = os.lstat(path)
        assert st.st_uid == 0 and not st.st_mode & 0o022, path

    # another commit with the same environment.yml: solved and downloaded again,
    # in a cache of its own (no earlier build's solve, repodata or package is used)
    commit = git.commit("org/conda-env", {"notes.md": "more\n"})
    again = builder.build(url, commit)
    lines = await build_lines(again)
    await again.result()
    assert any(line.startswith("Solving 1 specs") for line in lines), lines
    assert not exists(builder.envs_dir, again.key, ".cache")


def records(meta):
    """Root's build records (markers), without the lock files."""
    try:
        return sorted(n for n in os.listdir(meta) if not n.endswith(".lock"))
    except FileNotFoundError:
        return []


async def test_conda_prefix_links_into_the_hubs_records_are_refused(git, build_root, channel):
    # an attacker's postBuild swaps the prefix's conda-meta (which root lists for the
    # Python version) for a link to root's own records, and plants a second one in bin/
    builder = make_builder(build_root, channel)
    meta = builder.meta_dir
    url = git.create_repo(
        "org/conda-links",
        {
            "environment.yml": "dependencies: [binderlib]\n",
            "postBuild": "#!/bin/bash\nset -e\ncd /srv/binder/venv\n"
            f"rm -rf conda-meta\nln -s {meta} conda-meta\nln -s {meta} bin/hub-records\n",
        },
    )
    before = records(meta)
    task = builder.build(url, git.sha("org/conda-links"))
    await build_lines(task)
    with pytest.raises(BuildError, match="The build left something unsafe"):
        await task.result()
    # nothing of the build is kept, root's records are as they were (but for no marker)
    assert not exists(builder.envs_dir, task.key)
    assert builder.load(task.key) is None
    assert records(meta) == before


async def test_other_environment_is_solved_again(git, build_root, channel):
    url = git.create_repo(
        "org/conda-old", {"environment.yml": "dependencies:\n  - binderlib <2\n  - python\n"}
    )
    builder = make_builder(build_root, channel)
    task = builder.build(url, git.sha("org/conda-old"))
    lines = await build_lines(task)
    env = await task.result()
    assert any(line.startswith("Solved 2 conda packages") for line in lines), lines
    assert not exists(env.venv, "share/bindertool")


async def test_unsatisfiable_environment_explained(git, build_root, channel):
    url = git.create_repo("org/conda-unsat", {"environment.yml": "dependencies: [needs-missing]\n"})
    builder = make_builder(build_root, channel)
    task = builder.build(url, git.sha("org/conda-unsat"))
    await build_lines(task)
    with pytest.raises(BuildError) as info:
        await task.result()
    assert info.value.message == (
        "The conda environment of environment.yml cannot be solved: "
        "no set of packages from binderforge satisfies it."
    )
    tail = "\n".join(info.value.tail)
    assert "no-such-package >=1, for which no candidates were found" in tail
    assert builder.load(task.key) is None


async def test_channel_that_does_not_answer(git, build_root, channel):
    url = git.create_repo(
        "org/conda-nochannel",
        {"environment.yml": "channels: [nodefaults, no-such-channel]\ndependencies: [python]\n"},
    )
    builder = make_builder(build_root, channel)
    task = builder.build(url, git.sha("org/conda-nochannel"))
    await build_lines(task)
    with pytest.raises(BuildError) as info:
        await task.result()
    assert "could not be fetched from no-such-channel" in info.value.message
    assert "404" in "\n".join(info.value.tail)


async def test_bad_yaml_refused_with_its_line(git, build_root, channel):
    url = git.create_repo("org/conda-bad", {"environment.yml": "dependencies:\n  - [numpy\n"})
    builder = make_builder(build_root, channel)
    task = builder.build(url, git.sha("org/conda-bad"))
    await build_lines(task)
    with pytest.raises(UnsupportedRepository, match="environment.yml is not valid YAML"):
        await task.result()


async def test_apt_txt_refused_under_the_refuse_policy(git, build_root, channel):
    # the warn policy (the default) is tested through a hub in test_local_conda_hub.py
    url = git.create_repo(
        "org/conda-apt",
        {"environment.yml": "dependencies: [binderlib]\n", "apt.txt": "curl\nvim\n"},
    )
    builder = make_builder(build_root, channel, apt_policy="refuse")
    task = builder.build(url, git.sha("org/conda-apt"))
    await build_lines(task)
    with pytest.raises(UnsupportedRepository) as info:
        await task.result()
    assert "system packages from apt.txt (curl, vim)" in info.value.message
    assert "Kubernetes mode" in info.value.message
