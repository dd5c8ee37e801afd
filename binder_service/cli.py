"""The ``jupyterhub-binder`` command line: ``service``, ``inspect`` and ``plan``.

It lives in binder_service, the upper of the two packages, because it
reaches both: binder_service imports binder_spawner, never the reverse.
"""

import argparse
import sys

from binder_spawner import __version__, inspect_cmd, plan_cmd


def build_parser():
    parser = argparse.ArgumentParser(
        prog="jupyterhub-binder",
        description="Binder inside any JupyterHub: tools for admins.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    service = commands.add_parser(
        "service",
        help="run binder_service (as python -m binder_service; --help-all lists its options)",
        add_help=False,
    )
    service.set_defaults(func=lambda args: run_service([]))
    inspect_cmd.add_parser(commands)
    plan_cmd.add_parser(commands)
    return parser


def run_service(argv):
    # imported here so that ``inspect`` does not load the service's dependencies
    from .app import main as service_main

    return service_main(argv)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["service"]:
        # binder_service parses its own (traitlets) options.
        return run_service(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
