"""One object per hub process: every spawner of a class shares its collaborators.

JupyterHub makes one spawner per server; the registry client (image cache,
tokens), the repository policy (resolve cache) and local mode's environment
builder (its build lock and evictions) must be the same object for all of
them, or each user would get a cold cache and builds would race.
"""

from binder_spawner.local import LocalBinderSpawner
from binder_spawner.perprocess import one_per_process


def test_one_per_process_makes_once_per_key():
    made = []

    def make():
        made.append(object())
        return made[-1]

    key = (test_one_per_process_makes_once_per_key, "thing")
    first = one_per_process(key, make)
    assert one_per_process(key, make) is first
    assert len(made) == 1
    assert one_per_process((key, "other"), make) is not first


async def test_local_spawners_share_one_environment_builder(tmp_path):
    one, two = LocalBinderSpawner(), LocalBinderSpawner()
    assert one.builder is two.builder
    assert one.repo_policy is two.repo_policy


# BinderSpawner's: tests/test_build_manifests.py (it needs a kubeconfig to construct)
