"""Replay a request trace through the autoscaler on a virtual clock and report GPU-hours.

The trace is a CSV of ``arrival_seconds,duration_seconds`` rows (a header line is
allowed). The autoscaler's decision function is the one the operator runs
(``glowplug.operator.autoscaler.decide``), ticked every ``--tick`` seconds; around it
the simulator models the rest of the system:

- the activator: a request that finds no ready replica is held, and the first held
  request raises replicas 0 -> 1 at once (the synchronous wake); held requests start
  when the first replica becomes ready, ``--wake-delay`` after it was created;
- replicas hold their GPUs from creation (bound, still Pending) to removal;
- requests run for their duration once started; replicas are not a concurrency limit
  (targetConcurrency only drives the scaling decision).

Events at the same instant are processed in this order: completions, replicas becoming
ready, arrivals, then the autoscaler tick.

Reports, per idle timeout: GPU-hours used, the always-on baseline
(max(replicas, baselineReplicas) over the whole horizon), the oracle lower bound (GPUs
held only while requests are in flight, ceil(inFlight / targetConcurrency) replicas,
no wake delay), the idle-timeout bound (oracle plus, for every gap between busy
periods, the shorter of the gap and the idle timeout: the least any idle-timeout policy
can spend), wakes, and the latency added to requests that waited for a wake.

Examples:
  glowplug simulate --generate-seed-day seed-day.csv
  glowplug simulate seed-day.csv --idle-timeout 1m --idle-timeout 5m --wake-delay 45s
  glowplug simulate --seed-day --json
  glowplug simulate --seed-day --warm-up-seed 2 --idle-timeout 5m --idle-timeout auto \
      --auto-max 6m30s

``--idle-timeout auto`` runs the learned idle timeout (``idlepolicy.py``) through the
same ``decide``, with its pre-warm plan unless ``--no-auto-prewarm`` (the ``pre`` column
counts the wakes it started ahead of a predicted arrival; they are among ``wakes``);
``--warm-up-seed`` replays another seed day first, unmeasured, so that it starts from
what it learned "yesterday".
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from glowplug.api.durations import DurationError, parse_duration
from glowplug.api.spec import AutoIdle, PrewarmWindow, ScalingSpec
from glowplug.kube import timefmt
from glowplug.operator import prewarm, seedday
from glowplug.operator.autoscaler import ScalerState, ServiceLoad, decide

DEFAULT_IDLE_TIMEOUTS = ("1m", "2m", "5m", "10m", "15m")
# Trace second 0 is midnight UTC of Monday 2026-06-15 unless --day-start says otherwise.
DEFAULT_EPOCH = 1781481600.0

Trace = Sequence[tuple[float, float]]


@dataclass(frozen=True)
class SimConfig:
    scaling: ScalingSpec
    wake_delay: float = 30.0
    tick: float = 1.0
    gpus: int = 1
    baseline_replicas: int = 1
    gpu_hourly_price: float = 0.80
    start: float = 0.0
    horizon: float | None = None  # end of the simulated time; default: see default_horizon
    # The unix time of trace second 0, for pre-warm windows (scaling.prewarm) in wall time.
    epoch: float = DEFAULT_EPOCH
    # Count GPU time, wakes and waits only from here on: what comes before is a warm-up
    # (for example yesterday, from which idleTimeout: auto learns).
    measure_from: float = 0.0


@dataclass(frozen=True)
class Latency:
    count: int
    mean: float
    p50: float
    p99: float
    max: float


@dataclass(frozen=True)
class SimResult:
    idle_timeout: float  # with idleTimeout: auto, its upper bound
    requests: int
    horizon: float
    gpu_seconds: float
    baseline_gpu_seconds: float
    oracle_gpu_seconds: float
    bound_gpu_seconds: float
    quiet_gaps: int
    wakes: int
    max_replicas_used: int
    added_latency: Latency
    auto: bool = False  # idleTimeout: auto (learned); idle_timeout is then the upper bound
    mean_idle_timeout: float = 0.0  # the learned timeout, averaged over the ticks
    prewarms: int = 0  # wakes auto started ahead of a predicted arrival (of ``wakes``)
    auto_prewarm: bool = False  # auto with its pre-warm plan allowed

    @property
    def label(self) -> str:
        if self.auto:
            return "auto" if self.auto_prewarm else "auto-ka"
        return _short(self.idle_timeout)

    @property
    def saved_percent(self) -> float:
        if self.baseline_gpu_seconds <= 0:
            return 0.0
        return 100.0 * (1.0 - self.gpu_seconds / self.baseline_gpu_seconds)

    @property
    def vs_bound(self) -> float:
        return self.gpu_seconds / self.bound_gpu_seconds if self.bound_gpu_seconds else math.inf

    def as_dict(self, price: float) -> dict[str, Any]:
        out = asdict(self)
        out.update(
            gpu_hours=self.gpu_seconds / 3600,
            baseline_gpu_hours=self.baseline_gpu_seconds / 3600,
            oracle_gpu_hours=self.oracle_gpu_seconds / 3600,
            bound_gpu_hours=self.bound_gpu_seconds / 3600,
            saved_percent=self.saved_percent,
            used_over_bound=self.vs_bound,
            dollars=self.gpu_seconds / 3600 * price,
            baseline_dollars=self.baseline_gpu_seconds / 3600 * price,
        )
        return out


def default_horizon(trace: Trace, config: SimConfig) -> float:
    """Long enough after the last request for the service to reach zero again."""
    last = max((a + d for a, d in trace), default=config.start)
    s = config.scaling
    return last + s.idle_timeout + s.scale_down_delay + config.wake_delay + 2 * config.tick


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (no interpolation), 0 for an empty list."""
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def oracle(
    trace: Trace, start: float, horizon: float, target_concurrency: int, idle: float
) -> tuple[float, float, int]:
    """(oracle replica-seconds, idle-timeout bound replica-seconds, quiet gaps)."""
    events: list[tuple[float, int]] = []
    for a, d in trace:
        if d > 0 and a < horizon:
            events.append((a, 1))
            events.append((min(a + d, horizon), -1))
    events.sort()
    total = 0.0
    level = 0
    t = start
    busy_periods: list[list[float]] = []
    for when, change in events:
        if when > t:
            total += math.ceil(level / target_concurrency) * (when - t)
            t = when
        if level == 0 and change > 0:
            if busy_periods and busy_periods[-1][1] >= when:
                pass  # touches the previous period: one busy period
            else:
                busy_periods.append([when, when])
        level += change
        if level == 0 and busy_periods:
            busy_periods[-1][1] = when
    bound = total
    quiet = 0
    for i, (_, end) in enumerate(busy_periods):
        nxt = busy_periods[i + 1][0] if i + 1 < len(busy_periods) else horizon
        gap = max(0.0, nxt - end)
        bound += min(gap, idle)
        quiet += gap > idle
    return total, bound, quiet


def simulate(trace: Trace, config: SimConfig) -> SimResult:
    """Run the trace through the autoscaler; see the module docstring for the model."""
    scaling = config.scaling
    horizon = config.horizon if config.horizon is not None else default_horizon(trace, config)
    arrivals = sorted(trace)
    state = ScalerState(wake_seconds=config.wake_delay)
    pods: list[float] = []  # each replica's ready time; len(pods) == spec.replicas
    queue: list[tuple[float, float]] = []  # held requests (arrival, duration)
    inflight: list[float] = []  # end times (heap)
    last_finished: float | None = None
    waits: list[float] = []
    wakes = 0
    peak = 0
    gpu = base = 0.0
    t = config.start
    next_tick = config.start
    i = 0

    floors: dict[int, int] = {}
    timeout_sum, ticks = 0.0, 0
    prewarms = 0
    wake_at: float | None = None  # a predicted pre-warm ahead (idleTimeout: auto)

    def prewarm_floor(now: float) -> int:
        # Windows open and close on whole minutes: one evaluation per minute.
        if not scaling.prewarm:
            return 0
        minute = math.floor((config.epoch + now) / 60)
        if minute not in floors:
            floors[minute] = prewarm.floor(scaling.prewarm, minute * 60.0)
        return floors[minute]

    def set_replicas(n: int, now: float) -> None:
        nonlocal wakes, peak
        if n > len(pods):
            if not pods and now >= config.measure_from:
                wakes += 1
            pods.extend([now + config.wake_delay] * (n - len(pods)))
        elif n < len(pods):
            pods.sort()  # the replicas still starting go first
            del pods[n:]
        peak = max(peak, len(pods))

    # At zero with nothing to do, ticks change nothing: jump to the tick at or after the
    # next arrival or predicted pre-warm (only without floors, which could raise replicas
    # on their own).
    can_skip = not scaling.prewarm and scaling.min_replicas == 0
    while True:
        if can_skip and not pods and not queue and not inflight and i < len(arrivals):
            ahead = arrivals[i][0] if wake_at is None else min(arrivals[i][0], wake_at)
            if ahead > next_tick:
                steps = math.ceil((ahead - next_tick) / config.tick)
                next_tick += steps * config.tick
        candidates = [horizon, next_tick]
        if i < len(arrivals):
            candidates.append(arrivals[i][0])
        if inflight:
            candidates.append(inflight[0])
        candidates.extend(r for r in pods if r > t)
        nxt = max(t, min(candidates))
        held = len(pods)
        span = max(0.0, nxt - max(t, config.measure_from))
        gpu += held * config.gpus * span
        base += max(held, config.baseline_replicas) * config.gpus * span
        t = nxt
        if t >= horizon:
            break
        while inflight and inflight[0] <= t:
            last_finished = heapq.heappop(inflight)
        ready = sum(1 for r in pods if r <= t)
        if ready and queue:
            for arrival, duration in queue:
                if arrival >= config.measure_from:
                    waits.append(t - arrival)
                heapq.heappush(inflight, t + duration)
            queue.clear()
        while i < len(arrivals) and arrivals[i][0] <= t:
            arrival, duration = arrivals[i]
            i += 1
            if ready:
                heapq.heappush(inflight, t + duration)
            else:
                queue.append((arrival, duration))
                if not pods:
                    set_replicas(1, t)  # the activator's synchronous wake
        if next_tick <= t:
            load = ServiceLoad(
                in_flight=len(inflight),
                queued=len(queue),
                waking=bool(queue),
                last_request_finished=last_finished,
            )
            decision = decide(t, len(pods), scaling, load, state, prewarm_floor(t))
            timeout_sum += decision.idle_timeout
            ticks += 1
            wake_at = decision.prewarm_at
            if (
                not pods
                and decision.replicas
                and decision.reason == "scale up: predicted arrival"
                and t >= config.measure_from
            ):
                prewarms += 1
            set_replicas(decision.replicas, t)
            next_tick += config.tick
    waits.sort()
    latency = Latency(
        count=len(waits),
        mean=sum(waits) / len(waits) if waits else 0.0,
        p50=percentile(waits, 50),
        p99=percentile(waits, 99),
        max=waits[-1] if waits else 0.0,
    )
    measured = [(a, d) for a, d in arrivals if a >= config.measure_from]
    first = max(config.start, config.measure_from)
    oracle_s, bound_s, quiet = oracle(
        measured, first, horizon, scaling.target_concurrency, scaling.idle_timeout
    )
    return SimResult(
        idle_timeout=scaling.idle_timeout,
        requests=len(measured),
        horizon=horizon - first,
        gpu_seconds=gpu,
        baseline_gpu_seconds=base,
        oracle_gpu_seconds=oracle_s * config.gpus,
        bound_gpu_seconds=bound_s * config.gpus,
        quiet_gaps=quiet,
        wakes=wakes,
        max_replicas_used=peak,
        added_latency=latency,
        auto=scaling.auto_idle is not None,
        mean_idle_timeout=timeout_sum / ticks if ticks else scaling.idle_timeout,
        prewarms=prewarms,
        auto_prewarm=scaling.auto_idle is not None and scaling.auto_idle.prewarm,
    )


# --- command line -------------------------------------------------------------------------


def _idle(text: str) -> float | None:
    """A fixed idle timeout, or None for ``auto``."""
    return None if text == "auto" else _duration(text)


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except DurationError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _window(text: str) -> PrewarmWindow:
    parts = [p.strip() for p in text.split(",")]
    if len(parts) < 2:
        raise argparse.ArgumentTypeError("a window is CRON,DURATION[,REPLICAS[,TZ]]")
    try:
        prewarm.parse_cron(parts[0])
        return PrewarmWindow(
            schedule=parts[0],
            duration=parse_duration(parts[1]),
            replicas=int(parts[2]) if len(parts) > 2 else 1,
            time_zone=parts[3] if len(parts) > 3 else "UTC",
        )
    except (ValueError, DurationError) as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("trace", nargs="?", type=Path, help="CSV: arrival_seconds,duration_seconds")
    parser.add_argument("--seed-day", action="store_true", help="simulate the generated seed day")
    parser.add_argument(
        "--generate-seed-day", type=Path, metavar="FILE", help="write the seed-day trace and exit"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed for the seed day (default 1)")
    parser.add_argument(
        "--idle-timeout",
        action="append",
        type=_idle,
        help=f"a duration or auto; repeatable (default {', '.join(DEFAULT_IDLE_TIMEOUTS)})",
    )
    parser.add_argument("--auto-min", type=_duration, default=30.0, help="auto: default 30s")
    parser.add_argument("--auto-max", type=_duration, default=600.0, help="auto: default 10m")
    parser.add_argument("--wake-penalty", type=_duration, default=300.0, help="auto: default 5m")
    parser.add_argument(
        "--auto-prewarm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="auto: pre-warm ahead of predicted arrivals (default on; --no-auto-prewarm:"
        " keep-alive only)",
    )
    parser.add_argument(
        "--warm-up-seed",
        type=int,
        help="with --seed-day: replay the seed day of this seed first, unmeasured (what"
        " auto learns from yesterday)",
    )
    parser.add_argument("--wake-delay", type=_duration, default=30.0, help="default 30s")
    parser.add_argument("--scale-down-delay", type=_duration, default=60.0, help="default 1m")
    parser.add_argument("--target-concurrency", type=int, default=16)
    parser.add_argument("--min-replicas", type=int, default=0)
    parser.add_argument("--max-replicas", type=int, default=4)
    parser.add_argument("--baseline-replicas", type=int, default=1)
    parser.add_argument("--gpus", type=int, default=1, help="GPUs per replica")
    parser.add_argument("--gpu-hourly-price", type=float, default=0.80)
    parser.add_argument("--tick", type=_duration, default=1.0, help="autoscaler period")
    parser.add_argument(
        "--horizon",
        type=_duration,
        help="simulated time (default: a day for --seed-day, else until idle after the trace)",
    )
    parser.add_argument(
        "--prewarm",
        action="append",
        type=_window,
        default=[],
        metavar="CRON,DURATION[,REPLICAS[,TZ]]",
        help='a pre-warm window, e.g. "55 7 * * 1-5,10h" (repeatable)',
    )
    parser.add_argument(
        "--day-start",
        default="2026-06-15T00:00:00Z",
        help="wall-clock time of trace second 0, for --prewarm (default a Monday, UTC)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    if args.generate_seed_day:
        rows = seedday.generate(args.seed)
        count = seedday.write_csv(args.generate_seed_day, rows)
        print(f"wrote {count} requests to {args.generate_seed_day}")
        return 0
    measure_from = 0.0
    if args.seed_day:
        trace: list[tuple[float, float]] = seedday.generate(args.seed)
        horizon = args.horizon if args.horizon is not None else seedday.DAY
        if args.warm_up_seed is not None:
            day = seedday.DAY
            trace = seedday.generate(args.warm_up_seed) + [(a + day, d) for a, d in trace]
            measure_from, horizon = day, horizon + day
    elif args.trace:
        try:
            trace = seedday.read_csv(args.trace)
        except (OSError, ValueError) as err:
            print(f"glowplug simulate: {err}", file=sys.stderr)
            return 2
        horizon = args.horizon
    else:
        print(
            "glowplug simulate: give a trace file, --seed-day or --generate-seed-day",
            file=sys.stderr,
        )
        return 2
    idle_timeouts = args.idle_timeout or [parse_duration(x) for x in DEFAULT_IDLE_TIMEOUTS]
    auto = AutoIdle(
        min=args.auto_min,
        max=args.auto_max,
        wake_penalty=args.wake_penalty,
        prewarm=args.auto_prewarm,
    )
    base = SimConfig(
        measure_from=measure_from,
        scaling=ScalingSpec(
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            scale_down_delay=args.scale_down_delay,
            target_concurrency=args.target_concurrency,
            prewarm=tuple(args.prewarm),
        ),
        epoch=timefmt.parse_time(args.day_start) or DEFAULT_EPOCH,
        wake_delay=args.wake_delay,
        tick=args.tick,
        gpus=args.gpus,
        baseline_replicas=args.baseline_replicas,
        gpu_hourly_price=args.gpu_hourly_price,
    )
    fixed = [t if t is not None else auto.max for t in idle_timeouts]
    if horizon is None:
        # One horizon for every idle timeout, so their baselines compare.
        longest = replace(base, scaling=replace(base.scaling, idle_timeout=max(fixed)))
        horizon = default_horizon(trace, longest)
    results = [
        simulate(
            trace,
            replace(
                base,
                horizon=horizon,
                scaling=replace(
                    base.scaling,
                    idle_timeout=auto.max if idle is None else idle,
                    auto_idle=auto if idle is None else None,
                ),
            ),
        )
        for idle in idle_timeouts
    ]
    if args.json:
        print(json.dumps([r.as_dict(args.gpu_hourly_price) for r in results], indent=2))
    else:
        print(format_table(results, args.gpu_hourly_price, args.wake_delay))
    return 0


def format_table(results: Sequence[SimResult], price: float, wake_delay: float) -> str:
    if not results:
        return ""
    first = results[0]
    lines = [
        f"requests {first.requests}, horizon {first.horizon / 3600:.2f} h, wake delay "
        f"{wake_delay:g} s, oracle {first.oracle_gpu_seconds / 3600:.3f} GPU-h, "
        f"${price:.2f}/GPU-h",
        f"{'idle':>6} {'GPU-h':>7} {'base-h':>7} {'saved':>6} {'bound-h':>7} {'/bound':>6} "
        f"{'gaps':>4} {'wakes':>5} {'pre':>4} {'woken':>5} {'mean s':>7} {'p50 s':>6} {'p99 s':>6} "
        f"{'max s':>6} {'$ used':>7} {'$ base':>7}",
    ]
    for r in results:
        lat = r.added_latency
        lines.append(
            f"{r.label:>6} {r.gpu_seconds / 3600:7.3f} "
            f"{r.baseline_gpu_seconds / 3600:7.3f} {r.saved_percent:5.1f}% "
            f"{r.bound_gpu_seconds / 3600:7.3f} {r.vs_bound:6.3f} {r.quiet_gaps:4d} "
            f"{r.wakes:5d} {r.prewarms:4d} {lat.count:5d} {lat.mean:7.2f} {lat.p50:6.2f} "
            f"{lat.p99:6.2f} {lat.max:6.2f} {r.gpu_seconds / 3600 * price:7.2f} "
            f"{r.baseline_gpu_seconds / 3600 * price:7.2f}"
        )
    return "\n".join(lines)


def _short(seconds: float) -> str:
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    return f"{seconds:g}s"
