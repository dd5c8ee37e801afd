"""Sealing and chowning trees a sandbox uid wrote, without ever following a link."""

import os
import stat

import pytest

from binder_spawner.seal import SealError, chown_tree, seal
from binder_spawner.seccomp import filter_program

UID = 2_000_123


@pytest.fixture
def tree(tmp_path):
    env = tmp_path / "env"
    (env / "repo" / ".git").mkdir(parents=True)
    (env / "repo" / ".git" / "HEAD").write_text("ref\n")
    (env / "repo" / "small.txt").write_text("x" * 10)
    (env / "repo" / "big.bin").write_bytes(b"y" * 5000)
    (env / "venv" / "bin").mkdir(parents=True)
    (env / "venv" / "bin" / "python").symlink_to("/usr/bin/python3")
    (env / "venv" / "bin" / "tool").write_text("#!/bin/sh\n")
    os.chmod(env / "venv" / "bin" / "tool", 0o4777)
    os.link(env / "repo" / "small.txt", env / "repo" / "hard.txt")
    os.mkfifo(env / "repo" / "fifo")
    chown_tree(str(env), UID)
    return tmp_path, env


def test_seal_makes_the_tree_roots_and_read_only(tree):
    tmp_path, env = tree
    report = seal(str(env), forbidden=[str(tmp_path / "hub")], home_max_file=1000)
    for root, dirs, files in os.walk(env):
        for name in dirs + files:
            st = os.lstat(os.path.join(root, name))
            assert st.st_uid == 0
            assert stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o7022
            assert not stat.S_ISREG(st.st_mode) or st.st_nlink == 1
    assert report.removed == ["repo/fifo"]
    assert report.unlinked_hard_links == 1  # the second name is alone once the first is copied
    # a home gets copies of small files outside .git: small.txt and hard.txt
    assert report.home_bytes == 20
    assert (env / "repo" / "hard.txt").read_text() == "x" * 10
    # links are kept as links (a venv's interpreter points outside it)
    assert os.readlink(env / "venv" / "bin" / "python") == "/usr/bin/python3"


@pytest.mark.parametrize("target", ["../../hub/secret", "{hub}", "{hub}/jupyterhub.sqlite"])
def test_links_into_the_hubs_directories_are_refused(tree, target):
    tmp_path, env = tree
    hub = tmp_path / "hub"
    hub.mkdir()
    (env / "repo" / "sneaky").symlink_to(target.format(hub=hub))
    with pytest.raises(SealError, match="a directory of the hub"):
        seal(str(env), forbidden=[str(hub)])


def test_chown_tree_never_follows_links(tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("root's")
    tree = tmp_path / "tree"
    (tree / "sub").mkdir(parents=True)
    (tree / "link").symlink_to(outside)
    (tree / "sub" / "dirlink").symlink_to(tmp_path)
    chown_tree(str(tree), UID)
    assert os.lstat(tree / "link").st_uid == UID
    assert os.stat(outside).st_uid == 0
    assert os.stat(tmp_path).st_uid == 0


def test_seccomp_program_is_a_whole_number_of_instructions():
    for machine in ("x86_64", "aarch64"):
        program = filter_program(machine)
        assert program and len(program) % 8 == 0
    assert filter_program("sparc") is None
