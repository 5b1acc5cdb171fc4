"""Run the EmbeddingService operator (kopf).

It turns each EmbeddingService into an engine Deployment and Service (owner references,
so deleting the EmbeddingService removes them), copies spec.replicas to the Deployment,
writes status (phase, replicas, conditions) and Events, and runs the autoscaler and the
GPU-hour ledger. Credentials: in-cluster when run in a pod, else $KUBECONFIG.

Several replicas coordinate through kopf peering (apply crds/kopf-peering.yaml and a
ClusterKopfPeering or KopfPeering named like --peering): one is active, the others wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging

from glowplug.operator import daemon

log = logging.getLogger(__name__)

DEFAULT_PEERING = "glowplug"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        default=[],
        metavar="NS",
        help="watch this namespace (repeatable; globs like 'team-*' work); default: all namespaces",
    )
    peering = parser.add_mutually_exclusive_group()
    peering.add_argument(
        "--standalone",
        action="store_true",
        help="run without peering, even if a peering object exists (one replica only)",
    )
    peering.add_argument(
        "--peering",
        metavar="NAME",
        default=None,
        help=f"kopf peering object to coordinate replicas through; naming it makes peering"
        f" mandatory (default: use '{DEFAULT_PEERING}' if it exists, else run standalone)",
    )
    parser.add_argument(
        "--priority",
        type=int,
        default=0,
        help="peering priority: the highest running replica is the active one (default 0)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        metavar="PORT",
        help="serve Prometheus metrics on this port (0: off; default 8080)",
    )
    parser.add_argument(
        "--liveness",
        metavar="URL",
        default="",
        help="kopf liveness endpoint, e.g. http://0.0.0.0:8081/healthz (default: off)",
    )
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    daemon.add_arguments(parser)


class _QuietSuccess(logging.Filter):
    """Drops kopf's "Handler '...' succeeded." lines: event handlers run on every watch
    event (status writes included), so they would drown everything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Handler '") and msg.endswith("succeeded."))


def start_metrics(port: int) -> None:
    if port <= 0:
        return
    from glowplug.operator.servicemetrics import serve

    try:
        serve(port)
    except OSError as err:
        # Metrics are worth a log line, not the operator: keep reconciling without them.
        log.error("metrics: cannot listen on port %d: %s", port, err)
    else:
        log.info("metrics on :%d/metrics", port)


async def _operate(args: argparse.Namespace) -> None:
    import kopf

    namespaces = list(args.namespace)
    settings = kopf.OperatorSettings()
    settings.peering.name = DEFAULT_PEERING
    settings.peering.priority = args.priority
    settings.peering.mandatory = args.peering is not None
    settings.peering.standalone = bool(args.standalone)
    if args.peering:
        settings.peering.name = args.peering
    await kopf.operator(
        settings=settings,
        clusterwide=not namespaces,
        namespaces=namespaces,
        liveness_endpoint=args.liveness or None,
        standalone=bool(args.standalone) or None,
    )


def run(args: argparse.Namespace) -> int:
    import kopf

    from glowplug.operator import handlers

    kopf.configure(verbose=args.verbose, quiet=args.quiet)
    if not args.verbose:
        logging.getLogger("kopf.objects").addFilter(_QuietSuccess())
    handlers.register(args.namespace)
    daemon.configure(args)
    start_metrics(args.metrics_port)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_operate(args))
    return 0
