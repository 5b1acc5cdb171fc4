"""The operator's service loops in one process, without a cluster: ticks and CPU.

N kopf-style daemons (``glowplug.operator.daemon.Daemons.daemon``, the operator's own
code) run against the in-memory test double of the cluster API from
``operator/tests/test_scaling_loop.py`` (``ClusterAPIDouble``: no API server, so what is
measured is the loops themselves), for ``--seconds`` of real time, in one of two states:

- ``zero``: every service at zero with no pod and no load;
- ``held``: every service at ``minReplicas: 1`` with one ready pod holding a GPU and no
  load (``autoscale: false``: no activator to read).

Prints ticks per second (``glowplug_autoscaler_ticks_total``) and the process's CPU as
a share of one core. Reports only. Run ``python -m e2e.bench.loop_ticks --n 300``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


class ManyServicesDouble:
    """Routes each service's calls to its own ``ClusterAPIDouble``."""

    def __init__(self, doubles: dict[tuple[str, str], Any]) -> None:
        self.doubles = doubles
        self.answered = 0  # the daemon's outage bookkeeping reads it

    def __getattr__(self, name: str) -> Any:
        def call(namespace: str, svc: Any, *args: Any, **kwargs: Any) -> Any:
            key = (namespace, svc if isinstance(svc, str) else "")
            return getattr(self.doubles[key], name)(namespace, svc, *args, **kwargs)

        return call

    def warn(self, body: Any, reason: str, message: str) -> None:
        pass

    def info(self, body: Any, reason: str, message: str) -> None:
        pass


async def run(n: int, state: str, seconds: float) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "operator" / "tests"))
    from prometheus_client import REGISTRY
    from test_scaling_loop import ClusterAPIDouble, a_pod, embsvc  # type: ignore[import-not-found]
    from test_timers import StoppedDouble  # type: ignore[import-not-found]

    from glowplug.operator.daemon import Daemons
    from glowplug.operator.serviceloop import Options

    daemons = Daemons(Options(interval=1.0, checkpoint_every=10.0))
    doubles: dict[tuple[str, str], Any] = {}
    bodies = []
    for i in range(n):
        obj = embsvc(1 if state == "held" else 0, minReplicas=1 if state == "held" else 0)
        obj["spec"]["scaling"]["autoscale"] = False
        obj["metadata"]["name"] = f"svc-{i:05d}"
        obj["metadata"]["uid"] = f"u-{i}"
        double = ClusterAPIDouble(obj, time.time)
        if state == "held":
            double.pods = [a_pod(f"p{i}", time.time() - 5, ready=True)]
        doubles[("ns", obj["metadata"]["name"])] = double
        bodies.append(copy.deepcopy(obj))
    daemons.api = ManyServicesDouble(doubles)  # type: ignore[assignment]
    if hasattr(daemons, "timers"):  # the code with timers owned by one loop
        from glowplug.operator.timers import Timers

        daemons.timers = Timers(daemons.pokes.poke)
        daemons.timers.start()
    stopped = [StoppedDouble() for _ in bodies]
    tasks = [
        asyncio.create_task(daemons.daemon(body=b, stopped=s))
        for b, s in zip(bodies, stopped, strict=True)
    ]
    await asyncio.sleep(min(15.0, seconds / 2))  # the first ticks
    t0, c0 = time.monotonic(), time.process_time()
    k0 = REGISTRY.get_sample_value("glowplug_autoscaler_ticks_total") or 0.0
    await asyncio.sleep(seconds)
    k1 = REGISTRY.get_sample_value("glowplug_autoscaler_ticks_total") or 0.0
    wall, cpu = time.monotonic() - t0, time.process_time() - c0
    for s in stopped:
        s.event.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"ticks_per_s": round((k1 - k0) / wall, 2), "cpu_core_share": round(cpu / wall, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--seconds", type=float, default=30.0)
    args = ap.parse_args()
    for state in ("zero", "held"):
        out = asyncio.run(run(args.n, state, args.seconds))
        print(f"N={args.n} {state}: {out}", flush=True)


if __name__ == "__main__":
    main()
