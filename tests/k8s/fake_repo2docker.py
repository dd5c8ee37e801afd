"""A stand-in for ``jupyter-repo2docker`` that the emulated kubelet runs in build pods.

It accepts repo2docker's real command line (parsed with repo2docker's own
argument parser, so an option the real tool rejects fails here too), clones
the repository with git at ``--ref``, writes repo2docker-style JSON log lines
(``{"message": "...", "phase": "fetching|building|pushing|failed"}`` with
``--json-logs``, plain text otherwise) and, with ``--push``, pushes a small
manifest for ``--image-name`` to the registry over the Registry HTTP API v2.
Nothing is built: the "image" is one layer holding the repository's file list.

Test hooks, read from the cloned repository:

- ``FAIL_BUILD``: the build fails (exit code 1); the file's first line is the
  error message.
- ``SLOW_BUILD``: the build phase lasts the number of seconds in the file
  (default 30), logging a line each second, so tests can watch a running build.
- ``HOLD_BUILD``: the build phase lasts until the local file named in it
  exists (logging a line each second), so a test decides when a build ends.

Registry credentials come from a docker ``config.json``: ``$DOCKER_CONFIG``,
else ``~/.docker/config.json``, else ``/root/.docker/config.json``; absolute
paths inside volumes the kubelet mounted are mapped through the JSON object in
``$KUBELET_EMULATOR_MOUNTS`` (mount path -> local folder).
"""

from __future__ import annotations

import os
import sys

# Run as a script, this file's folder (tests/k8s, which has a selectors.py)
# would come first on sys.path and shadow the standard library's modules.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import json  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.k8s.oci import RegistryHTTP, credentials_from_docker_config, parse_image  # noqa: E402

BUILDPACKS = [
    ("Dockerfile", "DockerBuildPack"),
    ("environment.yml", "CondaBuildPack"),
    ("install.R", "RBuildPack"),
    ("requirements.txt", "PythonBuildPack"),
    ("setup.py", "PythonBuildPack"),
    ("pyproject.toml", "PythonBuildPack"),
]


class Build:
    def __init__(self, args):
        self.args = args

    def log(self, message, phase="building"):
        if self.args.json_logs:
            line = json.dumps({"message": message, "phase": phase})
        else:
            line = message.rstrip("\n")
        print(line, flush=True)

    def fail(self, message):
        self.log(message.rstrip("\n") + "\n", phase="failed")
        sys.exit(1)

    def git(self, *args, cwd=None):
        result = subprocess.run(
            ["git", *args],
            cwd=cwd,
            capture_output=True,
            text=True,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
        for line in (result.stdout + result.stderr).splitlines():
            self.log(line + "\n", phase="fetching")
        if result.returncode:
            self.fail(
                f"Failed to check out {self.args.repo}: git {args[0]} exited with {result.returncode}"
            )
        return result.stdout

    def fetch(self, checkout):
        self.log("Picked Git content provider.\n", phase="fetching")
        self.git("clone", "--no-checkout", "--", self.args.repo, str(checkout))
        ref = self.args.ref or "HEAD"
        # repo2docker's git provider: a commit, a tag, or a branch of the remote
        for candidate in (ref, f"origin/{ref}"):
            found = subprocess.run(
                ["git", "rev-parse", "--verify", "--quiet", f"{candidate}^{{commit}}"],
                cwd=checkout,
                capture_output=True,
                text=True,
            )
            if found.returncode == 0:
                break
        else:
            self.fail(f"Failed to check out ref {ref}")
        self.git("reset", "--hard", found.stdout.strip(), cwd=checkout)
        return self.git("rev-parse", "HEAD", cwd=checkout).strip()

    def build(self, checkout):
        folder = checkout
        for candidate in ("binder", ".binder"):
            if (checkout / candidate).is_dir():
                folder = checkout / candidate
        buildpack = next((bp for f, bp in BUILDPACKS if (folder / f).exists()), "PythonBuildPack")
        self.log(f"Using {buildpack} builder\n")
        fail = checkout / "FAIL_BUILD"
        slow = checkout / "SLOW_BUILD"
        steps = [
            "FROM docker.io/library/buildpack-deps:jammy",
            "COPY --chown=1000:1000 src/ ${REPO_DIR}/",
        ]
        for number, step in enumerate(steps, 1):
            self.log(f"Step {number}/{len(steps) + 1} : {step}\n")
        if slow.exists():
            text = slow.read_text().strip()
            seconds = float(text) if text else 30.0
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                self.log("Still building...\n")
                time.sleep(min(1.0, max(0.0, deadline - time.monotonic())))
        hold = checkout / "HOLD_BUILD"
        if hold.exists():
            release = Path(hold.read_text().strip())
            while not release.exists():
                self.log("Still building...\n")
                time.sleep(0.5)
        if fail.exists():
            reason = (fail.read_text().strip().splitlines() or ["the build failed"])[0]
            self.log(f"Step {len(steps) + 1}/{len(steps) + 1} : RUN ./postBuild\n")
            self.log(reason + "\n")
            self.fail("The command '/bin/sh -c ./postBuild' returned a non-zero code: 1")
        self.log(f"Step {len(steps) + 1}/{len(steps) + 1} : RUN ${{REPO_DIR}}/postBuild\n")
        self.log("Successfully built image\n")
        return buildpack

    def docker_config(self):
        mounts = json.loads(os.environ.get("KUBELET_EMULATOR_MOUNTS") or "{}")

        def local(path):
            for mount, folder in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
                if path == mount or path.startswith(mount.rstrip("/") + "/"):
                    return Path(folder) / os.path.relpath(path, mount)
            return Path(path)

        candidates = []
        if os.environ.get("DOCKER_CONFIG"):
            candidates.append(os.path.join(os.environ["DOCKER_CONFIG"], "config.json"))
        candidates += [os.path.expanduser("~/.docker/config.json"), "/root/.docker/config.json"]
        for candidate in candidates:
            path = local(candidate)
            try:
                return json.loads(path.read_text())
            except (OSError, ValueError):
                continue
        return {}

    def push(self, checkout, commit, buildpack):
        image = parse_image(self.args.image_name)
        credentials = credentials_from_docker_config(self.docker_config(), image.host)
        client = RegistryHTTP(image.host, credentials)
        self.log(f"Pushing image {self.args.image_name}\n", phase="pushing")
        listing = subprocess.run(
            ["git", "ls-files"], cwd=checkout, capture_output=True, text=True, check=True
        ).stdout
        labels = {"repo2docker.repo": self.args.repo, "repo2docker.ref": commit}
        for label in self.args.labels:
            key, _, value = label.partition("=")
            labels[key] = value
        config = {
            "config": {"Labels": labels, "User": str(self.args.user_id or 1000)},
            "repo2docker": {"buildpack": buildpack},
        }
        try:
            digest = client.push(
                image.name,
                image.tag or "latest",
                {"srv/repo/FILES": listing.encode(), "srv/repo/COMMIT": commit.encode()},
                config,
            )
        except Exception as e:
            self.fail(f"Failed to push image {self.args.image_name}: {e}")
        self.log(f"Successfully pushed {self.args.image_name} ({digest})\n", phase="pushing")

    def run(self):
        if self.args.run:
            self.fail("This stand-in cannot run images: pass --no-run.")
        with tempfile.TemporaryDirectory(prefix="repo2docker") as tmp:
            checkout = Path(tmp) / "repo"
            commit = self.fetch(checkout)
            buildpack = self.build(checkout)
            if self.args.push:
                self.push(checkout, commit, buildpack)
        return 0


def main(argv=None):
    from repo2docker.__main__ import get_argparser

    args = get_argparser().parse_args(argv)
    if args.push and not args.image_name:
        print("--push requires --image-name", file=sys.stderr)
        return 2
    return Build(args).run()


if __name__ == "__main__":
    sys.exit(main())
