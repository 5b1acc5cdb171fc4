"""Draw the dashboard's key panels from a real Prometheus into one PNG (no Grafana).

    python -m e2e.bench.panels --prometheus http://127.0.0.1:19090 \\
        --namespace glowplug-demo --out docs/images/panels-demo.png

Reads ``/api/v1/query_range`` over the last ``--minutes`` (default: since the earliest
sample of the service's ledger counter) and draws, with ``pngplot`` (standard library
only):

- GPU-seconds used and saved (the always-on baseline minus used), cumulative;
- replicas desired and ready;
- requests answered while at zero by the cache, and wakes;
- wake time: the operator's mean wake duration (replicas raised from zero to the first
  ready pod) so far.

``make demo PROMETHEUS=1`` leaves a Prometheus running that scrapes the demo's release
and prints the command to draw its panels (docs/cost-model.md shows the result).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from e2e.bench.pngplot import BLUE, GREEN, ORANGE, RED, Color, Line, Panel, panels
from e2e.prometheus import PrometheusError, query_range
from glowplug import metrics as m


def series(
    url: str, expr: str, start: float, end: float, step: float, t0: float
) -> dict[str, list[tuple[float, float]]]:
    """{label text: [(minutes since t0, value)]} for each series ``expr`` returns."""
    out: dict[str, list[tuple[float, float]]] = {}
    for s in query_range(url, expr, start, end, step):
        name = ",".join(f"{v}" for _, v in sorted(s["metric"].items())) or "value"
        out[name] = [((float(t) - t0) / 60.0, float(v)) for t, v in s["values"]]
    return out


def first_sample(url: str, selector: str, end: float) -> float | None:
    """About when the ledger counter of ``selector`` was first scraped (within a day)."""
    samples = query_range(url, f"{m.GPU_SECONDS_TOTAL}{selector}", end - 86400, end, 60)
    starts = [float(s["values"][0][0]) for s in samples if s["values"]]
    return min(starts) - 60 if starts else None


def draw(url: str, namespace: str, service: str, minutes: float | None, out: Path) -> None:
    sel = f'{{namespace="{namespace}",service=~"{service}"}}'
    end = time.time()
    if minutes is None:
        begin = first_sample(url, sel, end)
        if begin is None:
            raise PrometheusError(f"no glowplug_gpu_seconds_total{sel} in the last day")
        start = max(begin, end - 86400)
    else:
        start = end - 60 * minutes
    step = max(1.0, round((end - start) / 300))

    def one(expr: str, name: str, color: Color) -> list[Line]:
        got = series(url, expr, start, end, step, start)
        return [Line(name, pts, color) for pts in got.values()]

    used = f"sum({m.GPU_SECONDS_TOTAL}{sel})"
    base = f"sum({m.BASELINE_GPU_SECONDS_TOTAL}{sel})"
    replicas = {
        state: f'max({m.REPLICAS}{{namespace="{namespace}",service=~"{service}",state="{state}"}})'
        for state in ("desired", "ready")
    }
    grid = [
        Panel(
            "GPU-SECONDS USED AND SAVED",
            [*one(used, "USED", RED), *one(f"{base} - {used}", "SAVED", GREEN)],
            "GPU-S",
        ),
        Panel(
            "REPLICAS",
            [*one(replicas["desired"], "DESIRED", ORANGE), *one(replicas["ready"], "READY", BLUE)],
        ),
        Panel(
            "REQUESTS AT ZERO AND WAKES",
            [
                *one(f"sum({m.CACHE_SERVED_AT_ZERO_TOTAL}{sel})", "SERVED AT ZERO", GREEN),
                *one(f"sum({m.WAKES_TOTAL}{sel})", "WAKES", ORANGE),
            ],
            "COUNT",
        ),
        Panel(
            "WAKE TIME",
            one(
                f"sum({m.WAKE_DURATION}_sum{sel}) / (sum({m.WAKE_DURATION}_count{sel}) > 0)",
                "MEAN WAKE",
                BLUE,
            ),
            "SECONDS",
        ),
    ]
    missing = [p.title for p in grid if not p.lines]
    if missing:
        raise PrometheusError(f"no data for: {', '.join(missing)} ({url}, {sel})")
    title = f"GLOWPLUG {namespace}: FROM PROMETHEUS"
    out.parent.mkdir(parents=True, exist_ok=True)
    panels(out, title, grid)
    print(f"wrote {out} ({(end - start) / 60:.1f} minutes, step {step:g} s)", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("--namespace", required=True, help="the EmbeddingServices' namespace")
    parser.add_argument("--service", default=".*", help="a service name (regex; default all)")
    parser.add_argument(
        "--minutes", type=float, help="how far back (default: since the first sample)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/images/panels-demo.png"))
    args = parser.parse_args(argv)
    try:
        draw(args.prometheus, args.namespace, args.service, args.minutes, args.out)
    except (PrometheusError, OSError) as err:
        print(f"panels: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
