"""environment.yml and the files local mode cannot honour, read as repo2docker reads them (pure),
and ``jupyterhub-binder plan`` on copies of the configuration of public repositories.

The rules followed are repo2docker's Conda buildpack (``buildpacks/conda/__init__.py``:
``environment_yaml_path`` tries environment.yml then environment.yaml in the binder
folder, ``python_version`` takes the first ``python=X.Y`` dependency, ``detect``
makes the file alone choose the buildpack) and conda's own for channels
(``defaults`` appended unless ``nodefaults``; ``pip:`` ``-r`` relative to the file).
"""

import contextlib
import io
import json
import subprocess
import sys
import tracemalloc

import pytest

from binder_service import cli
from binder_spawner.localplan import (
    UnsupportedRepository,
    conda_channels,
    parse_apt,
    parse_environment,
    plan_build,
    python_pin,
)
from binder_spawner.plan_cmd import plan

from .utils import REPO_ROOT


def write_tree(root, files):
    for path, content in files.items():
        full = root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(content)
    return str(root)


# Copies of the configuration files of the public repositories (their default
# branches as read for this test), with a short README instead of their notebooks.
BINDER_EXAMPLES_CONDA = {
    "environment.yml": "name: example-environment\nchannels:\n  - conda-forge\n"
    "dependencies:\n  - numpy\n  - psutil\n  - toolz\n  - matplotlib\n  - dill\n"
    "  - pandas\n  - partd\n  - bokeh\n  - dask\n  - psycopg2\n",
    "apt.txt": "texlive-latex-base\ntexlive-latex-recommended\ntexlive-science\n"
    "texlive-latex-extra\ntexlive-fonts-recommended\ndvipng\nghostscript\nlibzmq3-dev\n"
    "pkg-config\n",
    "README.md": "binder-examples/conda\n",
}
BINDER_EXAMPLES_REQUIREMENTS = {
    "requirements.txt": "contourpy==1.0.6\ncycler==0.11.0\nfonttools==4.38.0\n"
    "kiwisolver==1.4.4\nmatplotlib==3.6.2\nnumpy==1.23.5\npackaging==21.3\npandas==1.5.1\n"
    "pillow==9.3.0\npyparsing==3.0.9\npython-dateutil==2.8.2\npytz==2022.6\n"
    "scipy==1.10.0\nseaborn==0.10.1\nsix==1.16.0\n",
    "README.md": "binder-examples/requirements\n",
}
JUPYTERLAB_DEMO = {
    "binder/environment.yml": "channels:\n- QuantStack\n- conda-forge\ndependencies:\n"
    "- jupyterlab=0.33.4\n- nodejs=8.9\n- notebook=5.6\n- nbconvert=5.3\n- ipykernel=4.7\n"
    "- ipywidgets=7.3\n- ipyleaflet=0.9\n- widgetsnbextension=3.3\n- altair=1.2\n"
    "- bqplot=0.11\n- dask=0.15\n- matplotlib=2.1\n- pandas=0.20\n- python=3.6\n"
    "- scikit-image=0.13\n- scikit-learn=0.18\n- seaborn=0.7\n- tensorflow=1.1\n"
    "- sympy=1.0\n- pyyaml\n- traittypes==0.2.1\n- invoke=0.21\n- xeus-cling=0.4.5\n"
    "- xtensor=0.17.0\n- xtensor-blas=0.12\n- xwidgets=0.12.2\n- xleaflet=0.2.1\n"
    "- r-ggplot2\n- r-irkernel=0.8.11\n",
    "binder/apt.txt": "r-base\nr-cran-ggplot2\nvim\n",
    "binder/postBuild": "set -ex\ninvoke build --env-name=root --no-kernel\n",
    "README.md": "jupyterlab/jupyterlab-demo\n",
}
IPYTHON_IN_DEPTH = {
    "binder/environment.yml": "channels:\n  - conda-forge\n  - defaults\ndependencies:\n"
    "  - cython\n  - ipython\n  - ipyparallel\n  - ipywidgets\n  - numpy\n  - matplotlib\n"
    "  - mpi4py\n  - networkx\n  - pandas\n  - scikit-image\n  - scikit-learn\n  - sympy\n",
    "binder/postBuild": "jupyter labextension install @jupyter-widgets/jupyterlab-manager\n",
    # the root one is not read: the binder folder wins
    "environment.yml": "dependencies: [python=2.7]\n",
    "README.md": "ipython/ipython-in-depth\n",
}


def run_plan_command(path, *args):
    """``jupyterhub-binder plan`` in this process: (exit status, its JSON)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = cli.main(["plan", str(path), *args])
    return status, json.loads(out.getvalue())


def run_plan_subprocess(path, *args):
    proc = subprocess.run(
        [sys.executable, "-m", "binder_service.cli", "plan", str(path), *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_plan_binder_examples_conda(tmp_path):
    status, result = run_plan_command(write_tree(tmp_path, BINDER_EXAMPLES_CONDA))
    assert status == 0
    assert (result["supported"], result["kind"], result["python"]) == (True, "conda", None)
    # the system packages are left out, and the warning names them
    assert len(result["warnings"]) == 1
    assert "apt.txt is not installed" in result["warnings"][0]
    assert "texlive-latex-base" in result["warnings"][0] and "pkg-config" in result["warnings"][0]
    assert result["steps"][0].startswith(
        "solve environment.yml for this platform from conda-forge:"
    )
    assert "numpy" in result["steps"][0] and "psycopg2" in result["steps"][0]


def test_plan_binder_examples_requirements(tmp_path):
    status, result = run_plan_command(write_tree(tmp_path, BINDER_EXAMPLES_REQUIREMENTS))
    assert status == 0
    assert result == {
        "supported": True,
        "kind": "python",
        "python": None,
        "steps": [
            "create a Python (default) environment",
            "uv pip install -r requirements.txt",
            result["steps"][2],
        ],
        "warnings": [],
    }
    assert result["steps"][2].startswith("uv pip install jupyterlab jupyterhub==")


def test_plan_jupyterlab_demo(tmp_path):
    status, result = run_plan_command(write_tree(tmp_path, JUPYTERLAB_DEMO))
    assert status == 0
    assert (result["kind"], result["python"]) == ("conda", "3.6")
    assert result["steps"][0].startswith(
        "solve binder/environment.yml for this platform from QuantStack, conda-forge:"
    )
    assert result["steps"][-1] == "run binder/postBuild"
    assert len(result["warnings"]) == 1
    assert (
        "binder/apt.txt" in result["warnings"][0]
        and "r-base, r-cran-ggplot2, vim" in (result["warnings"][0])
    )


def test_plan_ipython_in_depth(tmp_path):
    status, result = run_plan_command(write_tree(tmp_path, IPYTHON_IN_DEPTH))
    assert status == 0
    assert (result["kind"], result["python"], result["warnings"]) == ("conda", None, [])
    # "defaults" is the site's channels (conda-forge), listed once
    assert result["steps"][0].startswith(
        "solve binder/environment.yml for this platform from conda-forge: cython ipython"
    )


def test_plan_apt_refused_by_policy_and_channels_from_config(tmp_path):
    config = tmp_path / "config.py"
    config.write_text(
        "c.EnvironmentBuilder.apt_policy = 'refuse'\n"
        "c.EnvironmentBuilder.conda_channels = ['mirror-forge']\n"
    )
    repo = write_tree(tmp_path / "repo", BINDER_EXAMPLES_CONDA)
    status, result = run_plan_command(repo, "--config", str(config))
    assert status == 2
    assert result["supported"] is False
    assert "Kubernetes mode" in result["error"] and "dvipng" in result["error"]
    # the same repository without apt.txt: the site's channel follows the file's
    (tmp_path / "repo" / "apt.txt").unlink()
    status, result = run_plan_command(repo, "--config", str(config))
    assert status == 0
    assert "from conda-forge, mirror-forge:" in result["steps"][0]


def test_plan_dockerfile_refused(tmp_path):
    status, result = run_plan_command(
        write_tree(tmp_path, {"Dockerfile": "FROM scratch\n", "environment.yml": ""})
    )
    assert status == 2
    assert result["supported"] is False
    assert "a Dockerfile" in result["error"] and "Kubernetes mode" in result["error"]


def test_plan_command_line(tmp_path):
    # the installed command, in its own process: the same answer as plan()
    repo = write_tree(tmp_path, JUPYTERLAB_DEMO)
    assert run_plan_subprocess(repo) == (0, plan(repo))
    write_tree(tmp_path, {"binder/Dockerfile": "FROM scratch\n"})
    assert run_plan_subprocess(repo)[0] == 2


# -- environment.yml, pure -----------------------------------------------------


def test_environment_fields():
    env = parse_environment(
        "name: ignored\nprefix: /opt/ignored\nchannels: [bioconda, nodefaults, bioconda]\n"
        "dependencies:\n  - python=3.11\n  - numpy >=1.20\n  - 'scipy==1.11.*'\n"
        "  - pip:\n    - six==1.17.0\n    - -r requirements-extra.txt\n",
        "binder/environment.yml",
    )
    assert env.path == "binder/environment.yml"
    assert env.channels == ["bioconda"]
    assert env.nodefaults is True
    assert env.specs == ["python=3.11", "numpy >=1.20", "scipy==1.11.*"]
    assert env.pip == ["six==1.17.0", "-r requirements-extra.txt"]
    assert len(env.digest) == 64


@pytest.mark.parametrize(
    "specs, expected",
    [
        (["numpy", "python=3.10"], "3.10"),
        (["python==3.12.1"], "3.12"),
        (["python 3.9"], "3.9"),
        (["python=3"], None),
        (["python"], None),
        (["python>=3.8"], None),
        (["pythonnet=3.0", "python=3.11"], "3.11"),
        ([], None),
    ],
)
def test_python_pin(specs, expected):
    assert python_pin(specs) == expected


@pytest.mark.parametrize(
    "env_channels, nodefaults, site, expected",
    [
        ([], False, ["conda-forge"], ["conda-forge"]),
        (["bioconda"], False, ["conda-forge"], ["bioconda", "conda-forge"]),
        (["bioconda"], True, ["conda-forge"], ["bioconda"]),
        (
            ["defaults", "bioconda"],
            False,
            ["mirror", "conda-forge"],
            ["mirror", "conda-forge", "bioconda"],
        ),
        (["conda-forge", "defaults"], False, ["conda-forge"], ["conda-forge"]),
    ],
)
def test_channels(env_channels, nodefaults, site, expected):
    env = parse_environment(json.dumps({"channels": env_channels, "dependencies": []}))
    env.nodefaults = nodefaults
    assert conda_channels(env, site) == expected


@pytest.mark.parametrize(
    "text, message",
    [
        ("dependencies: [numpy\n", "not valid YAML (line 2)"),
        ("- numpy\n- scipy\n", "should be a mapping"),
        ("dependencies: numpy\n", "'dependencies' should be a list"),
        ("channels: conda-forge\n", "'channels' should be a list"),
        ("dependencies:\n  - pip: six\n", "'pip:' section should be a list"),
        ("dependencies:\n  - {conda: numpy}\n", "neither a package spec nor a 'pip:' list"),
        ("dependencies:\n  - 'numpy >=>= 1'\n", "is not a conda package spec"),
    ],
)
def test_bad_environment_refused_with_a_sentence(text, message):
    with pytest.raises(UnsupportedRepository) as info:
        parse_environment(text)
    assert message in info.value.message
    assert info.value.message.startswith("environment.yml")


def alias_bomb(levels):
    """YAML anchors ``l0`` .. ``l<levels-1>``: ``l<n>`` is a list of nine ``l<n-1>``."""
    lines = ["l0: &l0 [" + ", ".join(["xxxxxxxx"] * 9) + "]"]
    for n in range(1, levels):
        lines.append(f"l{n}: &l{n} [" + ", ".join([f"*l{n - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(
    "dependencies, message",
    [
        # one entry: a list of 9**12 strings (a 32 TB repr), refused without printing it
        ("  - *l11\n", "neither a package spec nor a 'pip:' list"),
        # a thousand pip: sections that are one list of 5000 lines
        ("  - {pip: *p}\n" * 1000, "more than 1000 lines under 'pip:'"),
    ],
)
def test_yaml_aliases_cannot_make_root_expand_a_small_file(tmp_path, dependencies, message):
    # root reads environment.yml in the hub's process; with anchors and aliases a file
    # of a few kilobytes stands for more strings than the machine has memory
    text = alias_bomb(12) + "p: &p [" + ", ".join(["six"] * 5000) + "]\n"
    text += "dependencies:\n" + dependencies
    assert len(text) < 64 * 1024
    tracemalloc.start()
    try:
        with pytest.raises(UnsupportedRepository) as info:
            plan_build(write_tree(tmp_path, {"environment.yml": text}))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert message in info.value.message and len(info.value.message) < 300, info.value.message
    # the parsed file shares its lists; only that much is ever held
    assert peak < 20 * 1024**2


def test_deeply_nested_configuration_is_refused_with_a_sentence(tmp_path):
    deep = "[" * 20000 + "]" * 20000
    with pytest.raises(UnsupportedRepository) as info:
        plan_build(write_tree(tmp_path, {"environment.yml": f"dependencies: {deep}\n"}))
    assert info.value.message == "environment.yml is nested too deeply to be read."
    # pyproject.toml: not a Python package, as with any TOML that cannot be read
    other = tmp_path / "other"
    plan_ = plan_build(
        write_tree(other, {"pyproject.toml": f"[project]\nx = {deep}\n[build-system]\n"})
    )
    assert plan_.install_repo is False


def test_empty_environment_is_a_conda_environment(tmp_path):
    plan_ = plan_build(write_tree(tmp_path, {"environment.yml": ""}))
    assert plan_.kind == "conda" and plan_.conda.specs == []


def test_environment_yaml_spelling_and_precedence(tmp_path):
    plan_ = plan_build(
        write_tree(
            tmp_path,
            {
                "binder/environment.yaml": "dependencies: [python=3.12]\n",
                "requirements.txt": "six\n",
                "environment.yml": "dependencies: [python=3.8]\n",
            },
        )
    )
    assert (plan_.kind, plan_.python_version, plan_.conda.path) == (
        "conda",
        "3.12",
        "binder/environment.yaml",
    )
    # the root requirements.txt is not read when a binder folder exists: no warning
    assert plan_.warnings == [] and plan_.requirements is None


def test_requirements_and_runtime_beside_environment_are_not_installed(tmp_path):
    plan_ = plan_build(
        write_tree(
            tmp_path,
            {
                "environment.yml": "dependencies: [numpy]\n",
                "requirements.txt": "six\n",
                "runtime.txt": "python-3.9\n",
                "setup.py": "",
            },
        )
    )
    assert plan_.requirements is None and plan_.install_repo is False
    assert plan_.python_version is None
    assert any("requirements.txt is not installed" in w for w in plan_.warnings)
    assert any("runtime.txt is ignored" in w and "python=3.9" in w for w in plan_.warnings)


def test_environment_symlink_out_of_the_repo_is_not_read(tmp_path):
    secret = tmp_path / "secret.yml"
    secret.write_text("dependencies: [secret-package]\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "environment.yml").symlink_to(secret)
    # a link is never followed by root: the repository is not a conda one
    assert plan_build(str(repo)).kind == "python"


def test_apt_policy(tmp_path):
    repo = write_tree(tmp_path, {"apt.txt": "# tools\ncurl\n\nvim # editor\n"})
    assert parse_apt("# tools\ncurl\n\nvim # editor\n") == ["curl", "vim"]
    warned = plan_build(repo)
    assert warned.kind == "python"
    assert warned.warnings == [
        "apt.txt is not installed: local mode cannot add system packages (curl, vim). "
        "Code that needs them will fail."
    ]
    with pytest.raises(UnsupportedRepository) as info:
        plan_build(repo, apt_policy="refuse")
    assert "system packages from apt.txt (curl, vim)" in info.value.message
    assert "Kubernetes mode" in info.value.message


@pytest.mark.parametrize("name", ["install.R", "Project.toml", "default.nix", "DESCRIPTION"])
def test_other_container_files_refused_beside_environment(tmp_path, name):
    with pytest.raises(UnsupportedRepository, match="Kubernetes mode"):
        plan_build(write_tree(tmp_path, {"environment.yml": "", name: ""}))
