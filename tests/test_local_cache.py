"""Local mode's download caches: one per build, started from a Jupyter package cache builds cannot change.

The attack: a repository's ``postBuild`` (any build code: a ``setup.py``, an
sdist's build script) rewrites the packages in its download cache, so that the
next build of *another* repository installs its code. It must reach nothing:
the files it shares with the hub's cache are root's and read-only, what it
replaces is its own copy, and the next build starts from a new copy.
"""

import asyncio
import logging
import os
import shutil
import stat
import textwrap
import time

import pytest

from binder_spawner.jupytercache import (
    KEEP_GENERATIONS,
    JupyterCache,
    cache_key,
    choose_generation,
    link_copy,
    python_minor,
)

from .localhub import build_lines, make_builder, reachable_build_root, read
from .utils import uid_base

# A real, tiny, pure-Python package from PyPI (one wheel, no dependencies),
# standing in for the Jupyter packages every build installs.
SMALL_PACKAGE = "six==1.17.0"
MARKER = "PLANTED_BY_ANOTHER_BUILD"

# runs as the build uid, after the install step, in the first repository's build
POISON_POSTBUILD = textwrap.dedent(
    f"""\
    #!/bin/sh
    exec python - <<'EOF'
    import glob, os
    cache = os.environ["UV_CACHE_DIR"]
    report, replaced = [], 0
    found = glob.glob(cache + "/**/six.py", recursive=True)
    for path in sorted(set(os.path.realpath(p) for p in found)):
        try:
            with open(path, "a") as f:
                f.write("\\n{MARKER} = True\\n")
            report.append("appended " + path)
        except OSError as e:
            report.append("refused " + path + ": " + e.strerror)
        # the build's own directory: the file can be replaced there
        os.unlink(path)
        with open(path, "w") as f:
            f.write("{MARKER} = True\\n")
        replaced += 1
    # something for the next build to find beside its cache
    with open(os.path.join(os.path.dirname(cache), "planted"), "w") as f:
        f.write("planted")
    with open("attack-report.txt", "w") as f:
        f.write("\\n".join(["replaced %d" % replaced] + report) + "\\n")
    EOF
    """
)

CHECK_POSTBUILD = textwrap.dedent(
    f"""\
    #!/bin/sh
    set -e
    python -c 'import six; print(getattr(six, "{MARKER}", False))' > six-check.txt
    ls -a "$(dirname "$UV_CACHE_DIR")" > cache-listing.txt
    """
)


# -- pure -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "version, expected",
    [("3.11", "3.11"), ("3.11.2", "3.11"), ("3.12.0rc1", "3.12"), ("3.9.18", "3.9")],
)
def test_python_minor(version, expected):
    assert python_minor(version) == expected


@pytest.mark.parametrize("version", ["", None, "2.7", "3", "3.11; rm -rf /", "--help", "x3.11"])
def test_python_minor_refuses_what_is_not_a_version(version):
    assert python_minor(version) is None


def test_cache_key_changes_with_what_it_holds():
    key = cache_key("3.11", ["jupyterlab"], ["/usr/bin/uv"])
    assert key.startswith("py3.11-")
    assert key == cache_key("3.11", ["jupyterlab"], ["/usr/bin/uv"])
    others = {
        cache_key("3.12", ["jupyterlab"], ["/usr/bin/uv"]),
        cache_key("3.11", ["jupyterlab", "jupyterhub==5.5.0"], ["/usr/bin/uv"]),
        cache_key("3.11", ["jupyterlab"], ["/opt/uv"]),
    }
    assert key not in others and len(others) == 3


def test_choose_generation():
    now = 10_000
    assert choose_generation([], now, 3600) == (None, True, [])
    assert choose_generation([".partial-1-2", "x"], now, 3600) == (None, True, [])
    assert choose_generation(["9000"], now, 3600) == ("9000", False, [])
    assert choose_generation(["6000", ".partial-3-4"], now, 3600) == ("6000", True, [])
    current, stale, old = choose_generation(["1", "3", "2", "4"], now, 3600)
    assert (current, stale) == ("4", True)
    assert old == ["2", "1"] and KEEP_GENERATIONS == 2


# -- a build's copy of the cache ----------------------------------------------------


def test_link_copy_shares_only_roots_read_only_package_files(tmp_path):
    uid = uid_base() + 1
    seed = tmp_path / "seed"
    (seed / "archive-v0" / "abc" / "pkg").mkdir(parents=True)
    (seed / "archive-v0" / "abc" / "pkg" / "mod.py").write_text("x = 1\n")
    (seed / "wheels-v8" / "pypi" / "pkg").mkdir(parents=True)
    (seed / "wheels-v8" / "pypi" / "pkg" / "1.0-py3-none-any.http").write_text("meta")
    (seed / "wheels-v8" / "pypi" / "pkg" / "1.0-py3-none-any.lock").write_text("")
    (seed / "wheels-v8" / "pypi" / "pkg" / "1.0-py3-none-any").symlink_to("../../../archive-v0/abc")
    (seed / ".lock").write_text("")
    dest = tmp_path / "dest"
    assert link_copy(str(seed), str(dest), uid) == 1

    shared = dest / "archive-v0" / "abc" / "pkg" / "mod.py"
    assert shared.stat().st_ino == (seed / "archive-v0" / "abc" / "pkg" / "mod.py").stat().st_ino
    assert shared.stat().st_uid == 0
    meta = dest / "wheels-v8" / "pypi" / "pkg" / "1.0-py3-none-any.http"
    assert meta.read_text() == "meta" and meta.stat().st_uid == uid
    assert meta.stat().st_ino != (seed / "wheels-v8/pypi/pkg/1.0-py3-none-any.http").stat().st_ino
    link = dest / "wheels-v8" / "pypi" / "pkg" / "1.0-py3-none-any"
    assert os.readlink(link) == "../../../archive-v0/abc" and link.lstat().st_uid == uid
    assert not (dest / ".lock").exists()
    assert not (dest / "wheels-v8" / "pypi" / "pkg" / "1.0-py3-none-any.lock").exists()
    for d in (dest, dest / "archive-v0", dest / "archive-v0" / "abc", dest / "wheels-v8"):
        assert d.stat().st_uid == uid, d


# -- real builds ------------------------------------------------------------------


@pytest.fixture
def build_root():
    root = reachable_build_root("binder-cache-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def exists(*parts):
    return os.path.lexists(os.path.join(*parts))


def generations(cache_dir):
    root = os.path.join(cache_dir, "jupyter")
    keys = [k for k in os.listdir(root) if not k.endswith(".lock")]
    assert len(keys) == 1, keys
    key_dir = os.path.join(root, keys[0])
    return key_dir, sorted(n for n in os.listdir(key_dir) if n.isdigit())


def find(root, name):
    return [os.path.join(d, name) for d, _, files in os.walk(root) if name in files]


async def test_a_build_cannot_change_what_another_build_installs(module_git_server, build_root):
    git = module_git_server
    cache_dir = os.path.join(build_root, "cache")
    # the shared cache of earlier versions, which any build could write: removed
    os.makedirs(os.path.join(cache_dir, "uv", "archive-v0"))
    builder = make_builder(build_root, cache_dir=cache_dir, jupyter_packages=[SMALL_PACKAGE])

    attacker = git.create_repo("mallory/poison", {"postBuild": POISON_POSTBUILD})
    task = builder.build(attacker, git.sha("mallory/poison"))
    lines = await build_lines(task)
    poisoned = await task.result()
    assert any("cache of the Jupyter packages" in line for line in lines), lines
    assert sorted(os.listdir(cache_dir)) == ["jupyter"]

    report = read(poisoned.repo_dir, "attack-report.txt").splitlines()
    # the attack found six in its cache, could change none of the hub's files,
    # and replaced its own copy
    assert report[0] != "replaced 0", report
    assert len(report) > 1 and all(line.startswith("refused ") for line in report[1:]), report
    assert all(line.endswith("Permission denied") for line in report[1:]), report

    # the hub's cache: root's, read-only to everyone else, six intact
    key_dir, gens = generations(cache_dir)
    assert len(gens) == 1
    seed = os.path.join(key_dir, gens[0])
    (six_in_seed,) = find(seed, "six.py")
    assert MARKER not in read(six_in_seed)
    for path in (cache_dir, os.path.dirname(key_dir), key_dir, seed, six_in_seed):
        st = os.lstat(path)
        assert st.st_uid == 0 and not st.st_mode & 0o022, path
    # the attacker's cache went with its build: the sealed environment has none
    assert not exists(poisoned.path, ".cache")

    victim = git.create_repo("alice/victim", {"postBuild": CHECK_POSTBUILD})
    task = builder.build(victim, git.sha("alice/victim"))
    lines = await build_lines(task)
    env = await task.result()
    assert not any("cache of the Jupyter packages" in line for line in lines), lines
    # six came from the hub's cache, not from PyPI
    assert not any("Downloading" in line or "Prepared" in line for line in lines), lines
    assert read(env.repo_dir, "six-check.txt").strip() == "False"
    assert "planted" not in read(env.repo_dir, "cache-listing.txt")
    (six,) = [p for p in find(env.venv, "six.py") if "site-packages" in p]
    assert MARKER not in read(six)
    # copied: sealing left one link per file, none shared with the hub's cache
    assert os.stat(six).st_nlink == 1
    assert generations(cache_dir)[1] == gens
    assert not exists(env.path, ".cache")


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


async def test_a_cache_left_writable_by_an_earlier_version_is_not_used(
    module_git_server, build_root
):
    # Earlier versions handed the whole cache directory to the build uid, so a
    # build could have left anything in it: here, the newest generation of the
    # Jupyter package cache, with six changed.
    git = module_git_server
    made = os.path.join(build_root, "made")
    builder = make_builder(build_root, cache_dir=made, jupyter_packages=[SMALL_PACKAGE])
    first = git.create_repo("org/first-build", {})
    await (builder.build(first, git.sha("org/first-build"))).result()
    key_dir, (generation,) = generations(made)

    old = os.path.join(build_root, "old")
    shutil.copytree(made, old, symlinks=True)
    planted = os.path.join(old, "jupyter", os.path.basename(key_dir), str(int(time.time()) + 10**6))
    os.rename(os.path.join(old, "jupyter", os.path.basename(key_dir), generation), planted)
    for path in find(planted, "six.py"):
        write(path, f"{MARKER} = True\n")
    uid = builder.sandbox.build_uid()
    for root, dirs, files in os.walk(old):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(root, name), uid, uid)
    os.lchown(old, uid, uid)

    upgraded = make_builder(build_root, cache_dir=old, jupyter_packages=[SMALL_PACKAGE])
    victim = git.create_repo("alice/after-upgrade", {"postBuild": CHECK_POSTBUILD})
    task = upgraded.build(victim, git.sha("alice/after-upgrade"))
    await build_lines(task)
    env = await task.result()
    assert read(env.repo_dir, "six-check.txt").strip() == "False"
    (six,) = [p for p in find(env.venv, "six.py") if "site-packages" in p]
    assert MARKER not in read(six)
    assert not exists(planted)
    st = os.lstat(old)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o711


@pytest.mark.parametrize("where", ["the cache", "inside the cache"])
async def test_a_link_left_for_the_cache_removal_gets_root_nothing(
    module_git_server, build_root, where
):
    # root removes the build's cache after the build: the build replaces it (or
    # fills it) with links to a directory of root's
    git = module_git_server
    canary = os.path.join(build_root, "roots-own")
    os.mkdir(canary, 0o700)
    write(os.path.join(canary, "keep"), "root's")
    if where == "the cache":
        plant = f"rm -rf /srv/binder/.cache\nln -s {canary} /srv/binder/.cache\n"
    else:
        plant = (
            f"ln -s {canary} /srv/binder/.cache/link\nln -s {canary}/keep /srv/binder/.cache/file\n"
        )
    url = git.create_repo(f"mallory/cache-link-{where[0]}", {"postBuild": "#!/bin/sh\n" + plant})
    builder = make_builder(build_root)
    task = builder.build(url, git.sha(f"mallory/cache-link-{where[0]}"))
    await build_lines(task)
    try:
        await task.result()
    except Exception as e:  # refusing the environment is fine too
        assert "unsafe" in str(e), e
    assert read(canary, "keep") == "root's"
    st = os.lstat(canary)
    assert st.st_uid == 0 and stat.S_IMODE(st.st_mode) == 0o700


async def fill_with(version, directory):
    await asyncio.to_thread(write, os.path.join(directory, "made-for"), version)


async def test_jupyter_cache_refreshes_keeps_two_generations_and_survives_failures(build_root):
    log = logging.getLogger("test-jupyter-cache")
    root = os.path.join(build_root, "jupyter")
    store = JupyterCache(root, [SMALL_PACKAGE], max_age=3600, log=log)
    fills = []

    async def fill(version, directory):
        fills.append(version)
        await asyncio.sleep(0.1)  # concurrent requests arrive during the fill
        await fill_with(version, directory)

    lines = []
    first = await store.get("3.11.4", fill, lines.append)
    assert read(first, "made-for") == "3.11" and fills == ["3.11"]
    assert lines == ["Preparing the hub's cache of the Jupyter packages for Python 3.11"]
    # fresh: the same generation, no fill
    assert await store.get("3.11", fill, lines.append) == first and len(fills) == 1

    # concurrent requests for a stale cache share one fill, and the generations
    # before the previous one are removed
    key_dir = os.path.dirname(first)
    old = int(os.path.basename(first)) - 3600
    for age in (1, 2, 3):
        os.rename(first if age == 1 else f"{key_dir}/new", f"{key_dir}/{old - age * 10}")
        if age < 3:
            shutil.copytree(f"{key_dir}/{old - age * 10}", f"{key_dir}/new")
    lines.clear()
    got = await asyncio.gather(*(store.get("3.11", fill, lines.append) for _ in range(3)))
    assert len(set(got)) == 1 and len(lines) == 1 and len(fills) == 2
    assert sorted(os.listdir(key_dir)) == sorted([os.path.basename(got[0]), str(old - 10)])

    # a failed fill: builds go on without the cache, it is not tried at every
    # build, and nothing half-made is left
    async def broken(version, directory):
        await fill_with(version, directory)
        raise RuntimeError("no network")

    other = JupyterCache(root, ["jupyterlab"], max_age=3600, log=log)
    lines.clear()
    assert await other.get("3.11", broken, lines.append) is None
    assert lines[-1] == (
        "The hub's cache of the Jupyter packages is unavailable; this build downloads them"
    )
    lines.clear()
    assert await other.get("3.11", fill, lines.append) is None and lines == []
    for key in os.listdir(root):
        if not key.endswith(".lock") and key != os.path.basename(key_dir):
            assert os.listdir(os.path.join(root, key)) == []
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o711
