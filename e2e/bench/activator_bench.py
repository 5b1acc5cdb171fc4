"""Activator overhead benchmark (``make bench``): direct vs activator vs nginx, one backend.

Targets, all in front of the same canned backend (``e2e.bench.backend``, a test double):

- ``direct``: the backend itself;
- ``activator``: ``glowplug activator --static-config`` (the real code path) with the
  event loop it picks by default (uvloop when installed); ``activator-asyncio``: the
  same with plain asyncio;
- ``nginx``: nginx as a keep-alive reverse proxy (Debian package; installed with apt if
  missing and possible, else skipped with a message);
- ``stack-SERVER-CLIENT-LOOP`` (``--stacks``): the minimal proxies of ``e2e.bench.stacks``
  (aiohttp, httptools or uvicorn server, aiohttp or httptools client), which chose the
  HTTP stack (uvicorn's httptools protocol: the maintained core weighed in issue 13).

By default: direct, activator and nginx, three interleaved rounds, medians reported, for
each payload (``--payloads``): ``small`` (one short input, an 8-float answer: the proxy's
fixed cost) and the realistic ``float-32x1024`` and ``base64-32x1024`` (32 inputs per
request, 32 vectors of 1024 dimensions back: about 700 KB of JSON floats or 175 KB of
base64), all in one run so the three stacks see the same machine.

Load: ``wrk`` (Debian package) in closed loop at concurrency 1, 16 and 64 (one thread,
one connection per concurrent request) gives the highest rate and the latency
percentiles at each concurrency; an open-loop Python generator in its own process
(``--rate``, default 500 req/s) gives latency at a fixed rate. "Added" latency is the
target's percentile minus the direct percentile of the same run. Everything runs on this
machine, so the load generator, the proxy and the backend share its cores: the numbers
are a floor for what a proxy gets on a dedicated core.

Writes ``e2e/bench/results/activator-<UTC time>.json`` and prints a table. Reports only:
it never fails on a slow result.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "e2e" / "bench" / "results"
BODY = '{"model": "bench", "input": "the quick brown fox"}'
# Every target gets the same bytes, an API key included: only activator-auth checks it.
BENCH_KEY = "gp-bench-key-0123456789abcdef"


def _batch_body(encoding: str) -> str:
    inputs = [f"passage {i}: the quick brown fox jumps over the lazy dog" for i in range(32)]
    return json.dumps({"model": "bench", "input": inputs, "encoding_format": encoding})


# name -> (request body, backend answer size)
PAYLOADS: dict[str, tuple[str, str]] = {
    "small": (BODY, "small"),
    "float-32x1024": (_batch_body("float"), "large"),
    "base64-32x1024": (_batch_body("base64"), "large"),
}
WRK_TEMPLATE = """
wrk.method = "POST"
wrk.body = '@BODY@'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer @KEY@"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'JSON {"requests":%d,"duration_us":%d,"errors":%d,"non2xx":%d,' ..
    '"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,"mean_us":%.1f}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
"""


def wrk_script(body: str) -> str:
    return WRK_TEMPLATE.replace("@BODY@", body.replace("'", "\\'")).replace("@KEY@", BENCH_KEY)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, proc: subprocess.Popen[bytes] | None = None, limit_s: float = 20) -> None:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


@contextlib.contextmanager
def process(cmd: list[str], port: int, **kw: Any) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)
    try:
        wait_port(port, proc)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def ensure_nginx() -> str | None:
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
    )
    if found:
        return found
    if os.geteuid() == 0 and shutil.which("apt-get"):
        print("nginx missing: installing the Debian package (apt-get install nginx-light)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
        subprocess.run(["apt-get", "install", "-y", "-qq", "nginx-light"], check=False, env=env)
        return shutil.which("nginx") or (
            "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None
        )
    return None


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print("wrk missing: installing the Debian package")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env)
    subprocess.run(["apt-get", "install", "-y", "-qq", "wrk"], check=False, env=env)
    return shutil.which("wrk")


NGINX_CONF = """
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {tmp}/body;
  proxy_temp_path {tmp}/proxy;
  fastcgi_temp_path {tmp}/fastcgi;
  uwsgi_temp_path {tmp}/uwsgi;
  scgi_temp_path {tmp}/scgi;
  upstream backend {{ server 127.0.0.1:{backend}; keepalive 128; }}
  server {{
    listen 127.0.0.1:{port} backlog=1024;
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://backend;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"""


def run_wrk(wrk: str, port: int, conns: int, seconds: float, script: Path) -> dict[str, Any]:
    out = subprocess.run(
        [wrk, "-t1", f"-c{conns}", f"-d{seconds:g}s", "-s", str(script),
         f"http://127.0.0.1:{port}/v1/embeddings"],
        capture_output=True, text=True, timeout=seconds + 60, check=False,
    )  # fmt: skip
    m = re.search(r"^JSON (.*)$", out.stdout, re.M)
    if not m:
        raise RuntimeError(f"wrk failed: {out.stdout} {out.stderr}")
    r: dict[str, Any] = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    return r


def run_rate(port: int, rate: float, seconds: float, body_file: Path) -> dict[str, Any]:
    """Open-loop latency at a fixed rate, from a separate process."""
    out = subprocess.run(
        [sys.executable, "-m", "e2e.bench.activator_bench", "--rate-worker",
         str(port), str(rate), str(seconds), str(body_file)],
        capture_output=True, text=True, cwd=ROOT, timeout=seconds + 60, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(out.stderr)
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


async def _rate_worker(port: int, rate: float, seconds: float, body: bytes) -> dict[str, Any]:
    import aiohttp

    url = f"http://127.0.0.1:{port}/v1/embeddings"
    data = body
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {BENCH_KEY}"}
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        for _ in range(50):  # warm the pools on both sides
            async with s.post(url, data=data, headers=headers) as r:
                await r.read()

        async def one() -> None:
            nonlocal errors
            t = time.perf_counter()
            try:
                async with s.post(url, data=data, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        errors += 1
                        return
            except aiohttp.ClientError:
                errors += 1
                return
            lat.append(time.perf_counter() - t)

        n = int(rate * seconds)
        start = time.perf_counter()
        tasks = []
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - start
    lat.sort()

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p / 100 * len(lat)))] * 1e6 if lat else float("nan")

    return {
        "rate": rate,
        "achieved_rps": len(lat) / elapsed,
        "requests": n,
        "errors": errors,
        "p50_us": pct(50),
        "p90_us": pct(90),
        "p99_us": pct(99),
        "max_us": lat[-1] * 1e6 if lat else float("nan"),
    }


def targets(
    backend_port: int, tmp: Path, nginx: str | None
) -> list[tuple[str, list[str], int, str]]:
    """(name, command, port, note) for every proxy target."""
    py = sys.executable
    out = []
    config = tmp / "static.yaml"
    config.write_text(
        json.dumps(
            {
                "services": [
                    {
                        "metadata": {"name": "bench", "namespace": "bench"},
                        "spec": {
                            "model": {"id": "bench", "source": {"huggingFace": {}}},
                            "replicas": 1,
                            "scaling": {"targetConcurrency": 1000},
                        },
                        "endpoints": [f"127.0.0.1:{backend_port}"],
                    }
                ]
            }
        )
    )
    keyed = tmp / "static-keys.yaml"
    doc = json.loads(config.read_text())
    doc["apiKeys"] = [{"metadata": {"name": "bench", "namespace": "bench"},
                       "stringData": {"key": BENCH_KEY}}]  # fmt: skip
    keyed.write_text(json.dumps(doc))
    base = [py, "-m", "glowplug.cli", "activator", "--host", "127.0.0.1", "--log-level", "WARNING"]
    glowplug = [*base, "--static-config", str(config), "--auth", "off"]
    have_uvloop = _importable("uvloop")
    if have_uvloop:
        p = free_port()
        out.append(("activator", [*glowplug, "--port", str(p), "--event-loop", "uvloop"], p,
                    "glowplug activator, uvloop, auth off"))  # fmt: skip
        p = free_port()
        authed = [*base, "--static-config", str(keyed), "--auth", "required"]
        out.append(("activator-auth", [*authed, "--port", str(p), "--event-loop", "uvloop"], p,
                    "glowplug activator, uvloop, API key required and checked"))  # fmt: skip
    p = free_port()
    out.append(("activator-asyncio", [*glowplug, "--port", str(p), "--event-loop", "asyncio"], p,
                "glowplug activator, asyncio loop"))  # fmt: skip
    if nginx:
        p = free_port()
        (tmp / "nginx.conf").write_text(NGINX_CONF.format(tmp=tmp, backend=backend_port, port=p))
        out.append(("nginx", [nginx, "-c", str(tmp / "nginx.conf"), "-p", str(tmp)], p,
                    "nginx 1 worker, keep-alive upstream"))  # fmt: skip
    backend = f"127.0.0.1:{backend_port}"
    if not _importable("httptools"):
        print("httptools not installed: only the aiohttp stack is compared (pip install httptools)")
    if not _importable("uvicorn"):
        print("uvicorn not installed: the uvicorn stack is skipped (pip install uvicorn)")
    for server in ("aiohttp", "httptools", "uvicorn"):
        for client in ("aiohttp", "httptools"):
            if "httptools" in (server, client) and not _importable("httptools"):
                continue
            if server == "uvicorn" and (client != "httptools" or not _importable("uvicorn")):
                continue
            for loop in (["uvloop"] if have_uvloop else []) + ["asyncio"]:
                p = free_port()
                cmd = [py, "-m", "e2e.bench.stacks", server, client, str(p), backend]
                if loop == "uvloop":
                    cmd.append("uvloop")
                name = f"stack-{server}-{client}-{loop}"
                out.append(
                    (name, cmd, p, f"minimal proxy: {server} server, {client} client, {loop}")
                )
    return out


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="duration of each wrk run")
    ap.add_argument("--concurrency", default="1,16,64")
    ap.add_argument("--rate", type=float, default=500.0, help="fixed rate for the open-loop run")
    ap.add_argument("--rate-seconds", type=float, default=8.0)
    ap.add_argument(
        "--only",
        default="activator,activator-auth,nginx",
        help="comma-separated target names, or 'all'"
        " (default: activator,activator-auth,nginx; direct always)",
    )
    ap.add_argument(
        "--stacks", action="store_true", help="also the minimal proxies that chose the stack"
    )
    ap.add_argument(
        "--repeat", type=int, default=3, help="rounds over all targets; medians are reported"
    )
    ap.add_argument(
        "--payloads",
        default=",".join(PAYLOADS),
        help=f"comma-separated, of {', '.join(PAYLOADS)} (default: all)",
    )
    ap.add_argument(
        "--large-concurrency", default="1,16", help="wrk concurrencies for the 32x1024 payloads"
    )
    ap.add_argument(
        "--large-rate", type=float, default=50.0, help="open-loop rate for the 32x1024 payloads"
    )
    ap.add_argument(
        "--rate-worker", nargs=4, metavar=("PORT", "RATE", "SECONDS", "BODY"),
        help=argparse.SUPPRESS,
    )  # fmt: skip
    args = ap.parse_args()
    if args.rate_worker:
        port, rate, secs, body_file = args.rate_worker
        body = Path(body_file).read_bytes()
        print(json.dumps(asyncio.run(_rate_worker(int(port), float(rate), float(secs), body))))
        return 0
    payloads = [p for p in args.payloads.split(",") if p]
    unknown = [p for p in payloads if p not in PAYLOADS]
    if unknown:
        ap.error(f"--payloads: unknown {unknown[0]!r}; known: {', '.join(PAYLOADS)}")

    wrk = ensure_wrk()
    if not wrk:
        print("wrk is not installed and cannot be installed here: no closed-loop numbers")
    nginx = ensure_nginx()
    if not nginx:
        print("nginx is not installed and cannot be installed here: skipping the nginx target")
    conc = [int(c) for c in args.concurrency.split(",")]
    only = {s for s in args.only.split(",") if s and s != "all"}
    if args.stacks and only:
        only |= {
            "activator-asyncio",
            *(
                f"stack-{a}-{b}-{c}"
                for a in ("aiohttp", "httptools", "uvicorn")
                for b in ("aiohttp", "httptools")
                for c in ("uvloop", "asyncio")
            ),
        }
    results: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(),
        "cpus": os.cpu_count(),
        "load_before": os.getloadavg(),
        "python": sys.version.split()[0],
        "wrk_seconds": args.seconds,
        "rate": args.rate,
        "repeat": args.repeat,
        "auth_check_us": auth_check_us(),
        "targets": {},
    }
    print(
        f"API key check (authenticate + admit + release, 1,000 keys, in-process):"
        f" {results['auth_check_us']:.2f} us per request"
    )
    results["payloads"] = {}
    with tempfile.TemporaryDirectory(prefix="glowplug-bench-") as tmpdir:
        tmp = Path(tmpdir)
        for payload in payloads:
            req_body, size = PAYLOADS[payload]
            large = size == "large"
            pconc = [int(c) for c in args.large_concurrency.split(",")] if large else conc
            rate = args.large_rate if large else args.rate
            print(f"== payload {payload}: request {len(req_body)} bytes, backend answer {size}")
            results["payloads"][payload] = {
                "request_bytes": len(req_body),
                "rate": rate,
                "targets": run_payload(
                    payload, req_body, size, pconc, rate, only, nginx, wrk, args, tmp
                ),
            }
    results["targets"] = results["payloads"].get("small", {}).get("targets", {})
    for entry in results["payloads"].values():
        add_deltas(entry)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"activator-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    for payload, entry in results["payloads"].items():
        print(f"\n=== payload {payload} ({entry['request_bytes']} bytes per request)")
        print_table(entry)
    print(f"\nwrote {path.relative_to(ROOT)}")
    return 0


def run_payload(
    payload: str,
    body: str,
    size: str,
    conc: list[int],
    rate: float,
    only: set[str],
    nginx: str | None,
    wrk: str | None,
    args: Any,
    tmp: Path,
) -> dict[str, Any]:
    """Every target in front of one backend answering ``size``, ``args.repeat`` rounds."""
    out: dict[str, Any] = {}
    script = tmp / f"post-{payload}.lua"
    script.write_text(wrk_script(body))
    body_file = tmp / f"body-{payload}.json"
    body_file.write_text(body)
    bport = free_port()
    backend = [sys.executable, "-m", "e2e.bench.backend", str(bport), size]
    with process(backend, bport, cwd=ROOT):
        all_targets: list[tuple[str, list[str], int, str]] = [
            ("direct", [], bport, "the backend itself")
        ]
        all_targets += targets(bport, tmp, nginx)
        runs: dict[str, list[dict[str, Any]]] = {}
        notes: dict[str, str] = {}
        # Rounds interleave the targets, so a burst of load from elsewhere on the
        # machine hits them alike; medians over rounds are what the table shows.
        for rnd in range(args.repeat):
            for name, cmd, port, note in all_targets:
                if only and name not in only and name != "direct":
                    continue
                print(f"-- {payload} round {rnd + 1}/{args.repeat} {name}: {note}", flush=True)
                notes[name] = note
                runs.setdefault(name, []).append(
                    measure(cmd, port, wrk, conc, rate, args, script, body_file)
                )
        for name, entries in runs.items():
            out[name] = {"note": notes[name], **median_entry(entries)}
            out[name]["runs"] = entries
    return out


def measure(
    cmd: list[str],
    port: int,
    wrk: str | None,
    conc: list[int],
    rate: float,
    args: Any,
    script: Path,
    body_file: Path,
) -> dict[str, Any]:
    ctx = process(cmd, port, cwd=ROOT) if cmd else contextlib.nullcontext()
    with ctx:
        entry: dict[str, Any] = {"wrk": {}}
        if wrk:
            run_wrk(wrk, port, 4, 1, script)  # warm-up
            for c in conc:
                entry["wrk"][str(c)] = run_wrk(wrk, port, c, args.seconds, script)
        try:
            entry["rate"] = run_rate(port, rate, args.rate_seconds, body_file)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            print(f"   open-loop run failed: {err}")
            entry["rate"] = {"error": str(err)[-500:]}
    return entry


def _median(values: list[float]) -> float:
    v = sorted(values)
    n = len(v)
    return v[n // 2] if n % 2 else (v[n // 2 - 1] + v[n // 2]) / 2


def _median_dict(items: list[dict[str, Any]]) -> dict[str, Any]:
    good = [i for i in items if "error" not in i]
    if not good:
        return items[0]
    keys = [k for k, v in good[0].items() if isinstance(v, (int, float))]
    return {k: _median([float(i[k]) for i in good]) for k in keys}


def median_entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
    conc = entries[0]["wrk"].keys()
    return {
        "wrk": {c: _median_dict([e["wrk"][c] for e in entries]) for c in conc},
        "rate": _median_dict([e["rate"] for e in entries]),
    }


def add_deltas(results: dict[str, Any]) -> None:
    direct = results["targets"].get("direct")
    if not direct:
        return
    for entry in results["targets"].values():
        for c, r in entry["wrk"].items():
            d = direct["wrk"].get(c)
            if d:
                r["added_p50_us"] = r["p50_us"] - d["p50_us"]
                r["added_p99_us"] = r["p99_us"] - d["p99_us"]
        r = entry["rate"]
        d = direct["rate"]
        if "error" in r or "error" in d:
            continue
        r["added_p50_us"] = r["p50_us"] - d["p50_us"]
        r["added_p99_us"] = r["p99_us"] - d["p99_us"]


def auth_check_us(n: int = 20000, rounds: int = 5) -> float:
    """What the API key check adds per request, in microseconds: best of ``rounds`` runs
    of ``n`` checks against a store of 1,000 keys (a CPU cost, so the minimum is the
    figure least disturbed by other load on a shared machine)."""
    from glowplug.activator.apikeys import KeyStore
    from glowplug.api import parse

    store = KeyStore("required", "bench")
    for i in range(1000):
        key = f"gp-bench-key-{i:016d}"
        store.apply({"metadata": {"name": f"k{i}", "namespace": "bench"},
                     "stringData": {"key": key, "requestsPerSecond": "1e9"}})  # fmt: skip
    svc = parse({"metadata": {"name": "bench", "namespace": "bench"},
                 "spec": {"model": {"id": "bench", "source": {"huggingFace": {}}}}})  # fmt: skip
    header = f"Bearer gp-bench-key-{500:016d}"
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(n):
            k = store.authenticate(header)
            assert k is not None
            store.admit(k, svc, wakes=False)
            store.release(k)
        best = min(best, (time.perf_counter() - t0) / n)
    return best * 1e6


def print_table(results: dict[str, Any]) -> None:
    conc = sorted({int(c) for e in results["targets"].values() for c in e["wrk"]})
    print("\nclosed loop (wrk): requests/s, p50 / p99 ms, added p50 / p99 ms vs direct")
    cols = f"{'req/s':>8} {'p50':>7} {'p99':>7} {'+p50':>7} {'+p99':>7} {'err':>4}"
    print(f"{'target':32} {'conc':>4} {cols}")
    for name, e in results["targets"].items():
        for c in conc:
            r = e["wrk"].get(str(c))
            if not r:
                continue
            print(
                f"{name:32} {c:>4} {r['rps']:>8.0f} {r['p50_us'] / 1e3:>7.2f}"
                f" {r['p99_us'] / 1e3:>7.2f}"
                f" {r.get('added_p50_us', 0) / 1e3:>7.2f} {r.get('added_p99_us', 0) / 1e3:>7.2f}"
                f" {r['errors'] + r['non2xx']:>4.0f}"
            )
    print(f"\nopen loop at {results['rate']:g} req/s: p50 / p99 ms, added p50 / p99 ms vs direct")
    print(f"{'target':32} {cols}")
    for name, e in results["targets"].items():
        r = e["rate"]
        if "error" in r:
            print(f"{name:32} failed")
            continue
        print(
            f"{name:32} {r['achieved_rps']:>8.0f} {r['p50_us'] / 1e3:>7.2f}"
            f" {r['p99_us'] / 1e3:>7.2f}"
            f" {r['added_p50_us'] / 1e3:>7.2f} {r['added_p99_us'] / 1e3:>7.2f} {r['errors']:>4.0f}"
        )


if __name__ == "__main__":
    sys.exit(main())
