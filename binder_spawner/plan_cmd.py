"""``jupyterhub-binder plan PATH``: what local mode would build from a checkout.

Prints one JSON object: ``{"supported": true, "kind": "conda" | "python",
"python": "3.x" | null, "steps": [...], "warnings": [...]}`` and exits 0, or
``{"supported": false, "error": "..."}`` and exits 2. The rules are the
builder's own (:func:`binder_spawner.localplan.plan_build`); ``--config``
applies a hub's ``c.EnvironmentBuilder`` settings (channels, ``apt.txt`` policy,
packages added to every environment). Nothing is built, fetched or run.
"""

import json
import os
import sys

from traitlets.config import Config
from traitlets.config.loader import ConfigFileNotFound

from .inspect_cmd import load_config
from .localplan import UnsupportedRepository, describe, plan_build

EXIT_REFUSED = 2


def add_parser(commands):
    parser = commands.add_parser(
        "plan",
        help="show what local mode would build from a repository checkout (JSON)",
        description=__doc__.split("\n\n")[1],
    )
    parser.add_argument("path", metavar="PATH", help="a checkout of the repository")
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="a jupyterhub_config.py (or .json) whose c.EnvironmentBuilder.* settings apply",
    )
    parser.set_defaults(func=run)
    return parser


def plan(path, config=None):
    """The JSON-ready plan for the checkout at ``path`` (refusals included)."""
    # imported here: the builder pulls in JupyterHub, which `inspect` does not need
    from .localbuild import EnvironmentBuilder

    builder = EnvironmentBuilder(config=config or Config())
    try:
        result = plan_build(path, apt_policy=builder.apt_policy)
    except UnsupportedRepository as e:
        return {"supported": False, "error": e.message}
    return describe(
        result,
        site_channels=builder.conda_channels,
        jupyter_packages=builder.jupyter_packages,
    )


def run(args, out=None):
    out = out or sys.stdout
    if not os.path.isdir(args.path):
        print(f"jupyterhub-binder plan: {args.path} is not a directory", file=sys.stderr)
        return 1
    try:
        config = load_config(args.config) if args.config else Config()
    except (OSError, ConfigFileNotFound) as e:
        print(f"jupyterhub-binder plan: cannot load {args.config}: {e}", file=sys.stderr)
        return 1
    result = plan(args.path, config)
    json.dump(result, out, indent=2)
    out.write("\n")
    return 0 if result["supported"] else EXIT_REFUSED
