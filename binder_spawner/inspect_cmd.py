"""``jupyterhub-binder inspect``: what will this link launch?

Prints one JSON object for an admin (or a script): the provider, the
normalised spec, the repository URL, the ref, the commit (with ``--resolve``,
or when the ref is already a full SHA; for a Zenodo or Figshare record, the
record's version and the spec of exactly that version), the image and build
pod names (when the commit is known) and the path that opens. A refused link prints
``{"error": "...", "status": 4xx}`` and exits with status 2.

Without ``--resolve`` nothing touches the network: hosts are checked for what
is known offline (IP literals in every spelling, ``localhost``); the DNS
check happens when the repository (or the DOI resolver and archive) is
contacted, as in a real launch.
"""

import asyncio
import json
import sys

from traitlets.config import Config
from traitlets.config.loader import (
    ConfigFileNotFound,
    JSONFileConfigLoader,
    PyFileConfigLoader,
)

from .images import build_pod_name, image_name
from .repos import RepoPolicy, SpecError, binderhub_provider_name

EXIT_REFUSED = 2


def add_parser(commands):
    parser = commands.add_parser(
        "inspect",
        help="show what a Binder link launches (JSON)",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("link", metavar="SPEC_OR_URL", help="provider spec or repository URL")
    parser.add_argument(
        "--resolve",
        action="store_true",
        help="resolve the ref to a commit with git ls-remote (a record: its version, from the archive)",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a jupyterhub_config.py (or .json) whose c.RepoPolicy.* settings apply",
    )
    parser.add_argument(
        "--image-prefix",
        default=None,
        help="image prefix (default: c.BinderSpawner.image_prefix from --config, else none)",
    )
    parser.set_defaults(func=run)
    return parser


def load_config(path):
    """A traitlets Config from a Python or JSON config file."""
    if path.endswith(".json"):
        loader = JSONFileConfigLoader(path)
    else:
        loader = PyFileConfigLoader(path)
    return loader.load_config()


def inspect(link, *, config=None, resolve=False, image_prefix=None):
    """The JSON-ready description of ``link``; raises :class:`SpecError`."""
    config = config or Config()
    policy = RepoPolicy(config=config)
    spec = policy.parse(link)
    if resolve:
        spec = asyncio.run(policy.resolve(spec))
    if image_prefix is None:
        image_prefix = config.BinderSpawner.get("image_prefix", "") if config else ""
    image = image_name(spec, spec.commit, prefix=image_prefix) if spec.commit else None
    return {
        "provider": spec.provider,
        "provider_name": binderhub_provider_name(spec.provider),
        "spec": spec.spec,
        "repo_url": spec.repo_url,
        "ref": spec.ref,
        "commit": spec.commit,
        "image": image,
        "build_pod_name": build_pod_name(image) if image else None,
        "urlpath": spec.urlpath,
        "repo_key": spec.repo_key,
        "resolved_spec": f"{spec.provider}/{spec.resolved_spec}" if spec.resolved_spec else None,
    }


def run(args, out=None):
    out = out or sys.stdout
    try:
        config = load_config(args.config) if args.config else Config()
    except (OSError, ConfigFileNotFound) as e:
        print(f"jupyterhub-binder inspect: cannot load {args.config}: {e}", file=sys.stderr)
        return 1
    try:
        result = inspect(
            args.link, config=config, resolve=args.resolve, image_prefix=args.image_prefix
        )
    except SpecError as e:
        json.dump({"error": e.message, "status": e.status_code}, out)
        out.write("\n")
        return EXIT_REFUSED
    json.dump(result, out, indent=2)
    out.write("\n")
    return 0
