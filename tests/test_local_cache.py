"""Local mode's download caches: one per build, and a wheelhouse builds cannot write.

The attack: a repository's ``postBuild`` (any build code: a ``setup.py``, an
sdist's build script) rewrites the packages in its download cache and tries
the wheelhouse, so that the next build of *another* repository installs its
code. It must reach nothing: that build starts from an empty cache of its own,
and the wheelhouse is root's and mounted read-only.
"""

import asyncio
import logging
import os
import shutil
import stat
import textwrap
import time
import zipfile

import pytest

from binder_spawner.wheelhouse import (
    KEEP_GENERATIONS,
    Wheelhouse,
    choose_generation,
    download_command,
    index_settings,
    python_minor,
    wheelhouse_key,
)

from .localhub import make_builder, reachable_build_root

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
    planted = 0
    for path in glob.glob(cache + "/**/six.py", recursive=True):
        with open(path, "a") as f:
            f.write("\\n{MARKER} = True\\n")
        planted += 1
    report = ["planted %d" % planted]
    wheels = glob.glob("/srv/wheels/*")
    report.append("wheelhouse files %d" % len(wheels))
    for path in wheels + ["/srv/wheels/planted-1.0-py3-none-any.whl"]:
        try:
            with open(path, "ab") as f:
                f.write(b"planted")
            report.append("wrote " + path)
        except OSError as e:
            report.append("refused " + path + ": " + e.strerror)
    # something for the next build to find beside its cache
    with open(os.path.join(os.path.dirname(cache), "planted"), "w") as f:
        f.write("planted")
    with open("attack-report.txt", "w") as f:
        f.write("\\n".join(report) + "\\n")
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


def test_index_settings_follow_the_builds_variables():
    assert index_settings({}) == ("https://pypi.org/simple", [])
    env = {
        "PIP_INDEX_URL": "https://pip.example/simple",
        "UV_INDEX_URL": "https://uv-old.example/simple",
        "UV_EXTRA_INDEX_URL": "https://a.example/simple https://b.example/simple",
    }
    assert index_settings(env) == (
        "https://uv-old.example/simple",
        ["https://a.example/simple", "https://b.example/simple"],
    )
    env["UV_DEFAULT_INDEX"] = "https://uv.example/simple"
    assert index_settings(env)[0] == "https://uv.example/simple"


def test_wheelhouse_key_changes_with_what_it_holds():
    index = ("https://pypi.org/simple", [])
    key = wheelhouse_key("3.11", ["jupyterlab"], index)
    assert key.startswith("py3.11-")
    assert key == wheelhouse_key("3.11", ["jupyterlab"], index)
    others = {
        wheelhouse_key("3.12", ["jupyterlab"], index),
        wheelhouse_key("3.11", ["jupyterlab", "jupyterhub==5.5.0"], index),
        wheelhouse_key("3.11", ["jupyterlab"], ("https://mirror.example/simple", [])),
        wheelhouse_key("3.11", ["jupyterlab"], ("https://pypi.org/simple", ["https://x/simple"])),
    }
    assert key not in others and len(others) == 4


def test_download_command_is_wheels_only_from_the_given_index():
    argv = download_command(
        "/py",
        "3.11",
        ["jupyterlab", "-r/etc/shadow"],
        "/dest",
        ("https://mirror.example/simple", ["https://extra.example/simple"]),
    )
    assert argv[:4] == ["/py", "-m", "pip", "--isolated"]
    assert argv[argv.index("--only-binary") + 1] == ":all:"
    assert argv[argv.index("--python-version") + 1] == "3.11"
    assert argv[argv.index("--index-url") + 1] == "https://mirror.example/simple"
    assert argv[argv.index("--extra-index-url") + 1] == "https://extra.example/simple"
    # packages come after "--": none of them can be read as an option
    assert argv[argv.index("--") + 1 :] == ["jupyterlab", "-r/etc/shadow"]


def test_choose_generation():
    now = 10_000
    assert choose_generation([], now, 3600) == (None, True, [])
    assert choose_generation([".partial-1-2", "x"], now, 3600) == (None, True, [])
    assert choose_generation(["9000"], now, 3600) == ("9000", False, [])
    assert choose_generation(["6000", ".partial-3-4"], now, 3600) == ("6000", True, [])
    current, stale, old = choose_generation(["1", "3", "2", "4"], now, 3600)
    assert (current, stale) == ("4", True)
    assert old == ["2", "1"] and KEEP_GENERATIONS == 2


# -- real builds ------------------------------------------------------------------


@pytest.fixture
def build_root():
    root = reachable_build_root("binder-cache-")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def read(*parts):
    with open(os.path.join(*parts)) as f:
        return f.read()


def exists(*parts):
    return os.path.lexists(os.path.join(*parts))


async def collect(task):
    return [line async for line in task.follow()]


def generations(cache_dir):
    wheels = os.path.join(cache_dir, "wheels")
    keys = [k for k in os.listdir(wheels) if not k.endswith(".lock")]
    assert len(keys) == 1, keys
    key_dir = os.path.join(wheels, keys[0])
    return key_dir, sorted(n for n in os.listdir(key_dir) if n.isdigit())


async def test_a_build_cannot_change_what_another_build_installs(module_git_server, build_root):
    git = module_git_server
    cache_dir = os.path.join(build_root, "cache")
    # the shared cache of earlier versions, which any build could write: removed
    os.makedirs(os.path.join(cache_dir, "uv", "archive-v0"))
    builder = make_builder(build_root, cache_dir=cache_dir, jupyter_packages=[SMALL_PACKAGE])

    attacker = git.create_repo("mallory/poison", {"postBuild": POISON_POSTBUILD})
    task = builder.build(attacker, git.sha("mallory/poison"))
    lines = await collect(task)
    poisoned = await task.result()
    assert any("into the hub's wheelhouse" in line for line in lines), lines
    assert not exists(cache_dir, "uv")

    report = read(poisoned.repo_dir, "attack-report.txt").splitlines()
    # the attack did reach the copy of six in its own build's cache...
    assert report[0] != "planted 0", report
    # ...and found the wheelhouse, but could write none of it
    assert report[1] != "wheelhouse files 0", report
    assert len(report) > 3 and all(line.startswith("refused ") for line in report[2:]), report

    # the wheelhouse is root's, read-only to everyone else, and holds an intact wheel
    key_dir, gens = generations(cache_dir)
    assert len(gens) == 1
    wheelhouse = os.path.join(key_dir, gens[0])
    (wheel,) = os.listdir(wheelhouse)
    assert wheel.startswith("six-1.17.0-")
    for path in (cache_dir, os.path.dirname(key_dir), key_dir, wheelhouse):
        st = os.lstat(path)
        assert st.st_uid == 0 and not st.st_mode & 0o022, path
    st = os.lstat(os.path.join(wheelhouse, wheel))
    assert st.st_uid == 0 and not st.st_mode & 0o022
    with zipfile.ZipFile(os.path.join(wheelhouse, wheel)) as z:
        assert MARKER.encode() not in z.read("six.py")

    # the attacker's cache went with its build: the sealed environment has none
    assert not exists(poisoned.path, ".cache")
    assert sorted(os.listdir(cache_dir)) == ["wheels"]

    victim = git.create_repo("alice/victim", {"postBuild": CHECK_POSTBUILD})
    task = builder.build(victim, git.sha("alice/victim"))
    lines = await collect(task)
    env = await task.result()
    assert not any("into the hub's wheelhouse" in line for line in lines), lines
    assert read(env.repo_dir, "six-check.txt").strip() == "False"
    assert "planted" not in read(env.repo_dir, "cache-listing.txt")
    (six,) = [
        os.path.join(root, "six.py")
        for root, _, files in os.walk(env.venv)
        if "six.py" in files and root.endswith("site-packages")
    ]
    assert MARKER not in read(six)
    # one wheelhouse download served both builds
    assert generations(cache_dir)[1] == gens
    assert not exists(env.path, ".cache")
    # packages were linked from the build's cache, which is gone: one link per file
    assert os.stat(six).st_nlink == 1


async def test_wheelhouse_refreshes_keeps_two_generations_and_survives_failures(build_root):
    log = logging.getLogger("test-wheelhouse")
    root = os.path.join(build_root, "wheels")
    wheelhouse = Wheelhouse(root, [SMALL_PACKAGE], max_age=3600, timeout=300, log=log)
    lines = []
    first = await wheelhouse.get("3.11.4", lines.append)
    assert first is not None and os.listdir(first) == ["six-1.17.0-py2.py3-none-any.whl"]
    assert lines == ["Downloading the Jupyter packages for Python 3.11 into the hub's wheelhouse"]
    # fresh: the same generation, nothing downloaded
    assert await wheelhouse.get("3.11", lines.append) == first and len(lines) == 1

    # concurrent requests for a stale wheelhouse share one download, and the
    # generations before the previous one are removed
    key_dir = os.path.dirname(first)
    hour_ago = int(time.time()) - 3600
    for age in (1, 2, 3):
        os.rename(first if age == 1 else f"{key_dir}/new", f"{key_dir}/{hour_ago - age * 10}")
        if age < 3:
            shutil.copytree(f"{key_dir}/{hour_ago - age * 10}", f"{key_dir}/new")
    lines.clear()
    got = await asyncio.gather(*(wheelhouse.get("3.11", lines.append) for _ in range(3)))
    assert len(set(got)) == 1 and len(lines) == 1
    assert sorted(os.listdir(key_dir)) == sorted([os.path.basename(got[0]), str(hour_ago - 10)])

    # no wheel for a package: builds go on without a wheelhouse, and it is not
    # tried again at every build
    broken = Wheelhouse(
        root,
        ["this-package-does-not-exist-binder-test==0.0.1"],
        max_age=3600,
        timeout=300,
        log=log,
    )
    lines.clear()
    assert await broken.get("3.11", lines.append) is None
    assert lines[-1] == "The hub's wheelhouse is unavailable; this build downloads every package"
    lines.clear()
    assert await broken.get("3.11", lines.append) is None and lines == []
    # a hub without pip (or any other failure): the same, never a failed build
    no_pip = Wheelhouse(
        os.path.join(build_root, "other"),
        [SMALL_PACKAGE],
        max_age=3600,
        timeout=300,
        log=log,
        python=os.path.join(build_root, "no-such-python"),
    )
    assert await no_pip.get("3.11") is None
    # nothing half-downloaded is left
    for key in os.listdir(root):
        if not key.endswith(".lock") and key != os.path.basename(key_dir):
            assert os.listdir(os.path.join(root, key)) == []
    assert stat.S_IMODE(os.lstat(root).st_mode) == 0o711
