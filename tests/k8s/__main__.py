"""Run the Kubernetes emulator on its own, for benchmarks and manual use.

    python -m tests.k8s serve --port 6443 --kubeconfig /tmp/kubeconfig --nodes 3 [--config FILE]
    python -m tests.k8s fault --kubeconfig /tmp/kubeconfig outage 30 [--status 503]
    python -m tests.k8s fault --kubeconfig /tmp/kubeconfig error --resource pods --verbs get \
        --status 500 --rate 1.0 [--count 3]
    python -m tests.k8s fault --kubeconfig /tmp/kubeconfig show | clear

Prints the API URL and the kubeconfig path, then serves until interrupted.
``--config`` is a JSON (or YAML) file of :class:`~tests.k8s.cluster.Cluster`
options, e.g. ``{"rbac": true, "node_defaults": {"cpu": "8", "memory": "32Gi"},
"kubernetes_version": "1.30"}``; command-line flags win over it.

``fault`` drives the fault injection of a running emulator (the hub or a
benchmark in another process keeps running): it talks to the emulator's
``/emulator/faults`` endpoint (tests/k8s/faults.py) at the server and with
the token of the kubeconfig, and prints the rules in force.
"""

import argparse
import asyncio
import json
import logging
import signal
import sys
import urllib.request
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


def fault(args):
    """Send one fault request to a running emulator; print its rules."""
    config = load_options(args.kubeconfig)
    server = config["clusters"][0]["cluster"]["server"].rstrip("/")
    token = (config["users"][0].get("user") or {}).get("token")
    method, body = "GET", None
    if args.action == "outage":
        method, body = "POST", {"outage": {"seconds": args.seconds, "status": args.status}}
    elif args.action == "error":
        rule = {"error_rate": args.rate, "status": args.status, "count": args.count}
        if args.resource:
            rule["resource"] = args.resource
        if args.verbs:
            rule["verbs"] = args.verbs.split(",")
        if args.latency:
            rule["latency"] = args.latency
        method, body = "POST", {"fault": rule}
    elif args.action == "clear":
        method = "DELETE"
    request = urllib.request.Request(
        server + "/emulator/faults",
        method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"Authorization": f"Bearer {token}"} if token else {},
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        print(json.dumps(json.load(response), indent=2))
    return 0


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
    inject = sub.add_parser("fault", help="inject or clear faults in a running emulator")
    inject.add_argument("--kubeconfig", required=True, help="the emulator's kubeconfig")
    actions = inject.add_subparsers(dest="action", required=True)
    outage = actions.add_parser("outage", help="every request fails for SECONDS")
    outage.add_argument("seconds", type=float)
    outage.add_argument("--status", type=int, default=503)
    error = actions.add_parser("error", help="add a rule: matching requests fail or slow down")
    error.add_argument("--resource", help="e.g. pods, pods/log (default: all)")
    error.add_argument("--verbs", help="comma-separated, e.g. get,list,watch (default: all)")
    error.add_argument("--status", type=int, default=500)
    error.add_argument("--rate", type=float, default=1.0, help="fraction that fails (0..1)")
    error.add_argument("--count", type=int, default=None, help="stop after this many errors")
    error.add_argument("--latency", type=float, default=0.0, help="seconds added to each")
    actions.add_parser("show", help="print the rules in force")
    actions.add_parser("clear", help="remove every rule and end the outage")
    args = parser.parse_args(argv)
    if args.command == "fault":
        return fault(args)
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
