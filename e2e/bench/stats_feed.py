"""Load from activators as changes vs every service every second (``make bench-stats``).

One run, one machine, both protocols against the same real activator process
(``glowplug activator --static-config`` with N EmbeddingServices at zero): the operator's
side of ``/stats`` as it was (``full``: a full read every second, parsed, and every
service's figures compared with the last read to find what changed, as the old
``poke_on_load`` did) and as it is (``delta``: ``activity.LoadReader.follow``, a long
poll of the changes after a cursor, glowplug.kube.stats). Each runs idle and with a
trickle: 1 % of the services get one request a second each, from a separate process,
served by a canned backend (``e2e.bench.backend``, a TEST DOUBLE of an engine).

Prints per N, load and protocol, in the steady state after the first read (a full read
for both; its size is printed too): /stats requests/s and bytes/s, the consumer's CPU
(this process, which does nothing else meanwhile), the activator's CPU (from /proc), and
the services reported changed per second (the pokes). Writes
``e2e/bench/results/stats-feed-<UTC time>.json``. Reports only: it never fails on a
slow result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from glowplug.kube import stats
from glowplug.operator.activity import LoadReader, StaticDiscovery, parse_stats

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "e2e" / "bench" / "results"
GLOWPLUG = ROOT / ".venv" / "bin" / "glowplug"
NAMESPACE = "bench"
READY_LIMIT = 600.0  # seconds for the activator to load N services (a loaded machine)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (proc(5): fields 14 and 15, in clock ticks)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def static_config(n: int, trickle: list[str], backend: str) -> dict[str, Any]:
    services = []
    for i in range(n):
        name = f"s{i:05d}"
        warm = name in trickle
        services.append(
            {
                "apiVersion": "glowplug.dev/v1alpha1",
                "kind": "EmbeddingService",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {
                    "model": {"id": f"bench/{name}", "source": {"huggingFace": {}}},
                    "replicas": 1 if warm else 0,
                },
                "endpoints": [backend] if warm else [],
            }
        )
    return {"services": services}


async def wait_http(url: str, limit_s: float = 60.0) -> None:
    end = time.monotonic() + limit_s
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > end:
                raise RuntimeError(f"{url} did not answer within {limit_s:g}s")
            await asyncio.sleep(0.2)


# --- the two consumers ------------------------------------------------------------------


# Each consumer makes its first (full) read, then the steady state is measured: both
# protocols start with the same full read, which is reported on its own.


class Meter:
    """Counters of one consumer, and where the steady state began."""

    def __init__(self) -> None:
        self.reads = self.nbytes = self.changed = 0
        self.first_bytes = 0
        self.started = asyncio.Event()  # the first read is done
        self.reader: LoadReader | None = None  # the delta consumer counts for itself

    def counts(self) -> tuple[int, int, int]:
        if self.reader is not None:
            return self.reader.reads, self.reader.bytes_read, self.changed
        return self.reads, self.nbytes, self.changed

    async def wait_started(self) -> None:
        end = time.monotonic() + 60
        # Before the window: polling costs nothing that is measured.
        while not self.started.is_set():
            if self.reader is not None and self.reader.reads:
                self.first_bytes = self.reader.bytes_read
                self.started.set()
                break
            if time.monotonic() > end:
                raise RuntimeError("no first /stats read within 60 s")
            await asyncio.sleep(0.01)


async def full_reads(url: str, m: Meter) -> None:
    """The previous consumer: GET /stats every second, every service parsed and compared
    with the last read (what ``poke_on_load`` did), until cancelled."""
    prev: dict[str, Any] | None = None
    async with aiohttp.ClientSession() as s:
        while True:
            started = time.monotonic()
            async with s.get(f"{url}/stats") as r:
                raw = await r.read()
            cur = parse_stats(json.loads(raw))
            if prev is None:
                m.first_bytes = len(raw)
                m.started.set()
            else:
                m.reads += 1
                m.nbytes += len(raw)
                m.changed += sum(1 for k in cur.keys() | prev.keys() if cur.get(k) != prev.get(k))
            prev = cur
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


async def delta_reads(url: str, m: Meter) -> None:
    """The consumer as it is: LoadReader.follow (a long poll of changes), until cancelled.
    Its own counters are the meter's (read at the window's ends, not polled)."""
    reader = LoadReader(StaticDiscovery([url]))

    def on_change(_namespace: str, _name: str) -> None:
        m.changed += 1

    m.reader = reader
    try:
        await reader.follow(on_change, 1.0)
    finally:
        await reader.close()


# --- the trickle client (its own process) ---------------------------------------------


async def trickle(url: str, names: list[str]) -> None:
    """One request a second to each named service, until killed."""
    async with aiohttp.ClientSession() as s:

        async def one(name: str) -> None:
            body = {"model": name, "input": "x"}
            with contextlib.suppress(aiohttp.ClientError):
                async with s.post(f"{url}/v1/embeddings", json=body) as r:
                    await r.read()

        while True:
            started = time.monotonic()
            await asyncio.gather(*(one(n) for n in names))
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))


# --- one N ------------------------------------------------------------------------------


async def measure(mode: str, url: str, act_pid: int, seconds: float) -> dict[str, float]:
    m = Meter()
    task = asyncio.create_task((full_reads if mode == "full" else delta_reads)(url, m))
    try:
        await m.wait_started()
        await asyncio.sleep(1.5)  # past the first read's pokes; the next poll is in flight
        reads0, bytes0, changed0 = m.counts()
        cpu0, act0, t0 = time.process_time(), cpu_seconds(act_pid), time.monotonic()
        await asyncio.sleep(seconds)
        wall = time.monotonic() - t0
        cpu, act = time.process_time() - cpu0, cpu_seconds(act_pid) - act0
        reads1, bytes1, changed1 = m.counts()
        reads, nbytes, changed = reads1 - reads0, bytes1 - bytes0, changed1 - changed0
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    return {
        "first_read_bytes": m.first_bytes,
        "requests_per_s": round(reads / wall, 3),
        "bytes_per_s": round(nbytes / wall),
        "consumer_cpu_percent": round(100 * cpu / wall, 2),
        "activator_cpu_percent": round(100 * act / wall, 2),
        "changed_per_s": round(changed / wall, 2),
    }


def run_n(n: int, fraction: float, seconds: float, tmp: Path) -> list[dict[str, Any]]:
    trickle_names = [f"s{i:05d}" for i in range(0, n, max(1, round(1 / fraction)))]
    bport, aport = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, "-m", "e2e.bench.backend", str(bport)], cwd=ROOT)
    cfg = tmp / f"services-{n}.yaml"
    cfg.write_text(yaml.safe_dump(static_config(n, trickle_names, f"127.0.0.1:{bport}")))
    log = (tmp / f"activator-{n}.log").open("w")
    act = subprocess.Popen(
        [str(GLOWPLUG), "activator", "--host", "127.0.0.1", "--port", str(aport),
         "--static-config", str(cfg), "--log-level", "WARNING"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{aport}"
    rows: list[dict[str, Any]] = []
    client: subprocess.Popen[bytes] | None = None
    try:
        asyncio.run(wait_http(f"{url}/readyz", READY_LIMIT))
        print(f"[stats-feed] N={n}: up, {len(trickle_names)} trickle services", flush=True)
        for load in ("idle", "trickle"):
            if load == "trickle":
                client = subprocess.Popen(
                    [sys.executable, "-m", "e2e.bench.stats_feed", "--trickle-client", url,
                     *trickle_names],
                    cwd=ROOT,
                )  # fmt: skip
                time.sleep(3)  # its connections are up
            for mode in ("full", "delta"):
                print(f"[stats-feed] N={n} {load} {mode}: {seconds:g}s", flush=True)
                row: dict[str, Any] = {"n": n, "load": load, "protocol": mode}
                row.update(asyncio.run(measure(mode, url, act.pid, seconds)))
                rows.append(row)
    finally:
        for p in (client, act, backend):
            if p is not None and p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(15)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        log.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[1000, 5000])
    parser.add_argument("--trickle", type=float, default=0.01, help="fraction with traffic")
    parser.add_argument("--seconds", type=float, default=30.0, help="per measurement")
    parser.add_argument("--trickle-client", nargs="+", metavar=("URL", "NAME"))
    args = parser.parse_args()
    if args.trickle_client:
        url, *names = args.trickle_client
        with contextlib.suppress(KeyboardInterrupt):
            signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
            asyncio.run(trickle(url, names))
        return
    if not GLOWPLUG.exists():
        sys.exit(f"{GLOWPLUG} is missing: run `make install`")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="glowplug-stats-feed-") as tmp:
        for n in args.n:
            try:
                rows.extend(run_n(n, args.trickle, args.seconds, Path(tmp)))
            except RuntimeError as err:  # reports only: say so and go on with the next N
                print(f"[stats-feed] N={n}: not measured: {err}", flush=True)
    head = f"{'N':>6} {'load':8} {'protocol':8} {'first read':>10} {'req/s':>7} {'bytes/s':>10}"
    print(f"\n{head} {'operator CPU':>12} {'activator CPU':>13} {'changed/s':>9}")
    for r in rows:
        print(
            f"{r['n']:>6} {r['load']:8} {r['protocol']:8} {r['first_read_bytes']:>10,}"
            f" {r['requests_per_s']:>7.2f}"
            f" {r['bytes_per_s']:>10,} {r['consumer_cpu_percent']:>11.2f}%"
            f" {r['activator_cpu_percent']:>12.2f}% {r['changed_per_s']:>9.2f}"
        )
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"stats-feed-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    doc = {"protocol": stats.__name__, "seconds": args.seconds, "trickle": args.trickle}
    out.write_text(json.dumps({**doc, "rows": rows}, indent=2))
    print(f"\n[stats-feed] results in {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
