"""Run the Kubernetes emulator on its own, for benchmarks and manual use.

    python -m tests.k8s serve --port 6443 --kubeconfig /tmp/kubeconfig --nodes 3 [--config FILE]

Prints the API URL and the kubeconfig path, then serves until interrupted.
``--config`` is a JSON (or YAML) file of :class:`~tests.k8s.cluster.Cluster`
options, e.g. ``{"rbac": true, "node_defaults": {"cpu": "8", "memory": "32Gi"},
"kubernetes_version": "1.30"}``; command-line flags win over it.
"""

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from .cluster import Cluster


def load_options(path):
    text = Path(path).read_text()
    try:
        return json.loads(text)
    except ValueError:
        import yaml

        return yaml.safe_load(text) or {}


async def serve(args):
    options = load_options(args.config) if args.config else {}
    if args.port is not None:
        options["port"] = args.port
    if args.nodes is not None:
        options["nodes"] = args.nodes
    if args.rbac:
        options["rbac"] = True
    cluster = Cluster(**options)
    await cluster.start()
    if args.kubeconfig:
        cluster.write_kubeconfig(args.kubeconfig)
    kubeconfig = args.kubeconfig or cluster.kubeconfig_path
    print(f"Kubernetes emulator listening on {cluster.url}", flush=True)
    print(f"kubeconfig: {kubeconfig}", flush=True)
    print(f"export KUBECONFIG={kubeconfig}", flush=True)
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    try:
        await stopped.wait()
    finally:
        await cluster.stop()


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m tests.k8s", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("serve", help="start the emulator and serve until interrupted")
    run.add_argument(
        "--port", type=int, default=None, help="API port on 127.0.0.1 (default: a free port)"
    )
    run.add_argument("--kubeconfig", default=None, help="where to write the kubeconfig")
    run.add_argument("--nodes", type=int, default=None, help="number of nodes (default 1)")
    run.add_argument("--config", default=None, help="JSON or YAML file of Cluster options")
    run.add_argument("--rbac", action="store_true", help="enforce authentication and RBAC")
    run.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.nodes is None and not args.config:
        args.nodes = 1
    try:
        asyncio.run(serve(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
