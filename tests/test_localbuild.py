"""Local mode's builder: repo2docker's rules (pure) and real builds with uv from PyPI."""

import asyncio
import glob
import os
import shutil
import stat

import pytest

from binder_spawner.localbuild import BuildError
from binder_spawner.localplan import (
    UnsupportedRepository,
    environment_key,
    nearest_python,
    parse_runtime,
    plan_build,
    select_evictions,
)

from .localhub import build_lines, make_builder, reachable_build_root, read

# A real, tiny, pure-Python package from PyPI (one wheel, no dependencies).
SMALL_PACKAGE = "six==1.17.0"


def write_tree(root, files):
    for path, content in files.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content)
    return str(root)


# -- the rules, pure ------------------------------------------------------------


@pytest.mark.parametrize(
    "files, expected",
    [
        pytest.param({"README.md": "hi"}, {}, id="nothing"),
        pytest.param(
            {"requirements.txt": "six", "postBuild": "#!/bin/sh", "start": "#!/bin/sh"},
            {"requirements": "requirements.txt", "post_build": "postBuild", "start": "start"},
            id="root",
        ),
        pytest.param(
            {"requirements.txt": "six", "binder/requirements.txt": "six", "setup.py": ""},
            {"binder_dir": "binder", "requirements": "binder/requirements.txt"},
            id="binder-dir-wins-and-setup-py-ignored",
        ),
        pytest.param(
            {".binder/runtime.txt": "python-3.10", "runtime.txt": "python-3.8"},
            {"binder_dir": ".binder", "python_version": "3.10"},
            id="dot-binder",
        ),
        pytest.param({"setup.py": ""}, {"install_repo": True}, id="setup-py"),
        pytest.param(
            {"pyproject.toml": '[project]\nname="x"\n[build-system]\nrequires=[]\n'},
            {"install_repo": True},
            id="pyproject-package",
        ),
        pytest.param(
            {"pyproject.toml": "[tool.black]\nline-length = 99\n"}, {}, id="pyproject-tool-only"
        ),
        pytest.param(
            {"runtime.txt": "python-3.12-2024-01-01"}, {"python_version": "3.12"}, id="runtime-date"
        ),
    ],
)
def test_plan_follows_repo2docker(tmp_path, files, expected):
    plan = plan_build(write_tree(tmp_path, files))
    defaults = {
        "binder_dir": "",
        "python_version": None,
        "requirements": None,
        "install_repo": False,
        "post_build": None,
        "start": None,
        "conda": None,
        "warnings": [],
    }
    assert vars(plan) == {**defaults, **expected}


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"Dockerfile": "FROM scratch"}, id="dockerfile"),
        pytest.param({"install.R": ""}, id="install-r"),
        pytest.param({"Project.toml": ""}, id="julia"),
        pytest.param({"default.nix": ""}, id="nix"),
        pytest.param({"runtime.txt": "r-4.3-2024-01-01"}, id="runtime-r"),
    ],
)
def test_container_configuration_names_kubernetes_mode(tmp_path, files):
    with pytest.raises(UnsupportedRepository) as info:
        plan_build(write_tree(tmp_path, files))
    assert "Kubernetes mode" in info.value.message


def test_root_config_ignored_when_binder_dir_exists(tmp_path):
    # repo2docker reads only the binder folder when it exists
    plan = plan_build(write_tree(tmp_path, {"environment.yml": "x", "binder/requirements.txt": ""}))
    assert plan.binder_dir == "binder"


def test_both_binder_dirs_refused(tmp_path):
    with pytest.raises(UnsupportedRepository, match="both"):
        plan_build(write_tree(tmp_path, {"binder/a": "", ".binder/b": ""}))


def test_config_symlink_out_of_the_repo_is_not_read(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("python-3.7")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "runtime.txt").symlink_to(secret)
    assert plan_build(str(repo)).python_version is None


@pytest.mark.parametrize("text", ["python", "python-", "py-3-x", "python-three"])
def test_bad_runtime_refused(text):
    with pytest.raises(UnsupportedRepository):
        parse_runtime(text)


@pytest.mark.parametrize(
    "requested, available, expected",
    [
        pytest.param("3.11", ["3.10.13", "3.11.2", "3.12.1"], "3.11.2", id="exact"),
        pytest.param("3.9", ["3.11.2", "3.12.1"], "3.11.2", id="nearest-newer"),
        pytest.param("3.11", ["3.10.1", "3.12.1"], "3.12.1", id="tie-prefers-newer"),
        pytest.param("3.14", ["3.11.2", "3.12.1"], "3.12.1", id="nearest-older"),
        pytest.param(None, ["3.11.2", "3.12.1"], "3.12.1", id="default-newest"),
        pytest.param("2.7", ["3.11.2"], "3.11.2", id="other-major"),
        pytest.param("3.11", [], None, id="none"),
    ],
)
def test_nearest_python(requested, available, expected):
    assert nearest_python(requested, available) == expected


def test_select_evictions_least_recently_used_first():
    entries = [("a", 10, 1.0), ("b", 10, 3.0), ("c", 10, 2.0), ("d", 10, 0.5)]
    assert select_evictions(entries, 40) == []
    assert select_evictions(entries, 25) == ["d", "a"]
    assert select_evictions(entries, 25, keep={"d"}) == ["a", "c"]


def test_environment_key_is_readable_and_distinct():
    url = "https://github.com/Org/Repo"
    key = environment_key(url, "a" * 40)
    assert key.startswith("github-com-org-repo-aaaaaaaaaaaa-")
    assert key != environment_key(url, "b" * 40)
    assert key != environment_key("https://github.com/org/repo", "a" * 40)
    assert key != environment_key(url, "a" * 40, salt="jupyterhub==5.5.0")


# -- real builds -------------------------------------------------------------------


@pytest.fixture(scope="module")
def build_root():
    root = reachable_build_root("binder-localbuild-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def git(module_git_server):
    return module_git_server


def exists(*parts):
    return bool(glob.glob(os.path.join(*parts)))


async def test_build_reuse_and_concurrent_launches(git, build_root):
    url = git.create_repo(
        "org/pkgrepo",
        {
            "binder/requirements.txt": SMALL_PACKAGE + "\n",
            "binder/runtime.txt": "python-3.99\n",
            "binder/postBuild": "#!/bin/sh\nset -e\necho postBuild ran as $(id -u)\n"
            'python -c \'import six; open("built-by-postbuild", "w").write(six.__version__)\'\n',
            "binder/start": '#!/bin/sh\nexport FROM_START=1\nexec "$@"\n',
            "setup.py": "raise SystemExit('root setup.py must be ignored with a binder dir')\n",
        },
    )
    commit = git.sha("org/pkgrepo")
    builder = make_builder(build_root)
    first = builder.build(url, commit)
    second = builder.build(url, commit)
    assert second is first  # concurrent launches follow one build
    lines, lines2 = await asyncio.gather(build_lines(first), build_lines(second))
    assert lines == lines2
    env = await first.result()
    assert sum("Cloning" in line for line in lines) == 1
    assert any("postBuild ran as" in line for line in lines)
    assert any("six==1.17.0" in line for line in lines), lines
    # runtime.txt asked for a Python that does not exist: the nearest one, with a warning
    assert any("Warning: runtime.txt asks for Python 3.99" in line for line in lines)
    assert env.warnings and env.python_version.startswith("3.")
    assert env.start == "binder/start"
    assert read(env.repo_dir, "built-by-postbuild") == "1.17.0"
    assert exists(env.venv, "bin", "python")

    # a later launch of the same commit reuses the environment: no clone, no install
    again = builder.build(url, commit)
    assert await build_lines(again) == []
    assert (await again.result()).path == env.path

    # so does a new builder (a restarted hub) on the same directory
    restarted = make_builder(build_root)
    assert restarted.load(env.key).path == env.path
    assert await build_lines(restarted.build(url, commit)) == []


async def test_broken_requirements_fail_with_the_installer_error(git, build_root):
    url = git.create_repo(
        "org/broken", {"requirements.txt": "this-package-does-not-exist-binder-test==0.0.1\n"}
    )
    builder = make_builder(build_root)
    task = builder.build(url, git.sha("org/broken"))
    await build_lines(task)
    with pytest.raises(BuildError) as info:
        await task.result()
    tail = "\n".join(info.value.tail)
    assert "this-package-does-not-exist-binder-test" in tail
    assert "exited with status" in info.value.message
    # nothing half-built is left to be reused, and the next launch tries again
    assert builder.load(task.key) is None
    assert builder.build(url, git.sha("org/broken")) is not task


async def test_dockerfile_gets_the_kubernetes_message(git, build_root):
    url = git.create_repo("org/docker", {"Dockerfile": "FROM scratch\n"})
    builder = make_builder(build_root)
    task = builder.build(url, git.sha("org/docker"))
    await build_lines(task)
    with pytest.raises(UnsupportedRepository, match="Kubernetes mode"):
        await task.result()


async def test_pyproject_package_installed_and_budget_evicts_least_recently_used(git, build_root):
    files = {
        "pyproject.toml": '[project]\nname = "binderdemo"\nversion = "1.0"\n'
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n',
        "binderdemo/__init__.py": "VALUE = 42\n",
    }
    url = git.create_repo("org/package", files)
    first_commit = git.sha("org/package")
    second_commit = git.commit("org/package", {"binderdemo/__init__.py": "VALUE = 43\n"})
    root = os.path.join(build_root, "budget")
    os.makedirs(root, mode=0o711)
    builder = make_builder(root)
    one = builder.build(url, first_commit)
    await build_lines(one)
    env_one = await one.result()
    assert exists(env_one.venv, "lib", "python*", "site-packages", "binderdemo", "__init__.py")

    # a budget below two environments: building the second evicts the first
    builder.disk_budget = env_one.size + env_one.size // 2
    two = builder.build(url, second_commit)
    await build_lines(two)
    env_two = await two.result()
    assert builder.load(env_two.key) is not None
    assert builder.load(env_one.key) is None
    assert not exists(env_one.path)

    # an environment in use by a server is never evicted, whatever the budget
    builder.disk_budget = 0
    builder.acquire(env_two.key)
    assert builder._evict() == []
    assert builder.load(env_two.key) is not None
    builder.release(env_two.key)
    assert builder._evict() == [env_two.key]
    assert builder.load(env_two.key) is None


async def test_clone_goes_to_the_pinned_address_only(git, build_root):
    # The spawner passes RepoPolicy.git_config(): checked addresses pinned with
    # http.curloptResolve. A name DNS does not know reaches the git server only
    # through the pin, so the clone cannot be sent elsewhere by DNS.
    from binder_spawner import gitref

    git.create_repo("org/pinned", {"requirements.txt": ""})
    port = git.url.rsplit(":", 1)[1].split("/")[0]
    url = git.url.replace("127.0.0.1", "binder-pin-test.invalid") + "/org/pinned"
    commit = git.sha("org/pinned")
    builder = make_builder(build_root)
    unpinned = builder.build(url, commit)
    await build_lines(unpinned)
    with pytest.raises(BuildError):
        await unpinned.result()
    pins = [f"binder-pin-test.invalid:{port}:127.0.0.1"]
    config = gitref.safe_config(allowed_schemes=("http",), pins=pins)
    pinned = builder.build(url, commit, config)
    lines = await build_lines(pinned)
    env = await pinned.result()
    assert any("Cloning" in line for line in lines)
    assert exists(env.repo_dir, "requirements.txt")


async def test_unknown_commit_is_refused_after_one_fetch(git, build_root):
    url = git.create_repo("org/known", {"requirements.txt": ""})
    builder = make_builder(build_root)
    missing = "0123456789abcdef" * 2 + "01234567"
    first = builder.build(url, missing)
    lines = await build_lines(first)
    with pytest.raises(BuildError, match="does not exist"):
        await first.result()
    assert any("Cloning" in line for line in lines)
    # the next launch of that commit is answered at once: no clone, no fetch
    second = builder.build(url, missing)
    assert await build_lines(second) == []
    with pytest.raises(BuildError, match="does not exist"):
        await second.result()


async def test_abandoned_build_is_cancelled_and_leaves_nothing(git, build_root):
    url = git.create_repo(
        "org/slow", {"postBuild": "#!/bin/sh\necho postbuild-started-here\nsleep 120\n"}
    )
    builder = make_builder(build_root, abandoned_build_grace=1)
    task = builder.build(url, git.sha("org/slow"))
    # a launch follows the build until postBuild runs, then goes away
    follower = task.follow()
    async for line in follower:
        if "postbuild-started-here" in line:
            break
    await follower.aclose()  # what a cancelled launch does to it
    assert task.followers == 0
    with pytest.raises(BuildError, match="cancelled"):
        await asyncio.wait_for(task.result(), 60)
    assert builder.load(task.key) is None
    assert not exists(builder.envs_dir, task.key)
    # nothing of the build runs any more: its cgroup is gone
    assert not glob.glob(f"/sys/fs/cgroup/pids/**/{builder.instance_id}-build-*", recursive=True)


async def test_builds_wait_for_a_slot_and_show_the_step_limit(git, build_root):
    slow = git.create_repo("org/slot-a", {"postBuild": "#!/bin/sh\nsleep 2\n"})
    other = git.create_repo("org/slot-b", {"requirements.txt": ""})
    builder = make_builder(build_root, max_concurrent_builds=1, build_timeout=600)
    first = builder.build(slow, git.sha("org/slot-a"))
    await asyncio.sleep(0)
    second = builder.build(other, git.sha("org/slot-b"))
    lines_first, lines_second = await asyncio.gather(build_lines(first), build_lines(second))
    await first.result()
    await second.result()
    assert any("each step may take up to 10 minutes" in line for line in lines_first)
    assert any("Waiting for a build slot (1 builds run at once)" in line for line in lines_second)


async def test_sealed_environment_is_roots_and_read_only(git, build_root):
    url = git.create_repo(
        "org/sealed",
        {
            "postBuild": "#!/bin/sh\nset -e\nchmod 4777 postBuild\nmkdir -p data\n"
            "echo x > data/f\nchmod 777 data data/f\nln data/f data/g\nmkfifo data/fifo\n"
        },
    )
    builder = make_builder(build_root)
    task = builder.build(url, git.sha("org/sealed"))
    await build_lines(task)
    env = await task.result()
    for root, dirs, files in os.walk(env.path):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            assert st.st_uid == 0, (root, name)
            if not stat.S_ISLNK(st.st_mode):
                assert not st.st_mode & 0o7022, (root, name, oct(st.st_mode))
            assert not stat.S_ISFIFO(st.st_mode)
            assert not stat.S_ISREG(st.st_mode) or st.st_nlink == 1
    assert read(env.repo_dir, "data", "g") == "x\n"
    # root's marker is in its own directory, not in the environment
    assert exists(builder.meta_dir, f"{env.key}.json")
    assert stat.S_IMODE(os.stat(builder.meta_dir).st_mode) == 0o700
