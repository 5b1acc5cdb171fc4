"""Hostile clients against a real activator process, with its memory measured meanwhile.

``python -m e2e.bench.hostile`` (part of ``make bench``) starts ``glowplug activator
--static-config`` with API keys required (``--auth required``) in front of the canned
backend (``e2e.bench.backend``, a test double), throws every case of ``CASES`` at it, one
after the other, and samples the activator's resident memory (``VmRSS`` from
``/proc/PID/status``, every 20 ms) while each case runs. Each case checks what the
activator answered (a clear 4xx, a 503 for a full budget, or a close) and that a normal
request still succeeds right after it. Prints one line per case and writes
``e2e/bench/results/hostile-<UTC time>.json``; e2e/tests/test_hostile.py runs the same
corpus at a smaller scale and asserts it.
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
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "e2e" / "bench" / "results"
KEY = "gp-hostile-corpus-key-0123456789"
MEMORY_LIMIT = 1024 * 1024 * 1024  # the chart's activator memory limit (values.yaml)
MODEL = "bench"
SLEEPY = "sleepy"  # a service at zero whose wake takes long: requests to it are held


@dataclass
class Scale:
    """How hard each case pushes (the test uses ``small``)."""

    slowloris: int = 400
    idle: int = 3000
    big: int = 20 * 1024 * 1024  # bytes of URL or header
    held: int = 64  # concurrent 8 MiB bodies held while a service wakes
    pipelined: int = 30000
    bad_keys: int = 2000
    header_timeout: float = 15.0  # the activator's default (http.Limits)

    @classmethod
    def small(cls) -> Scale:
        return cls(slowloris=100, idle=500, big=4 * 1024 * 1024, held=48, pipelined=20000,
                   bad_keys=300)  # fmt: skip


@dataclass
class Result:
    name: str
    outcome: str  # what the activator did, in words
    ok: bool  # the outcome is the expected one and a normal request succeeded after
    rss_before_mib: float
    rss_peak_mib: float
    seconds: float
    detail: dict[str, Any] = field(default_factory=dict)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class RssSampler:
    """Peak resident memory of ``pid`` while the ``with`` block runs."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()

    def __enter__(self) -> RssSampler:
        self.before = rss_bytes(self.pid)
        self.peak = self.before
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError):
                self.peak = max(self.peak, rss_bytes(self.pid))

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pid))


# --- the wire ------------------------------------------------------------------------------


class Target:
    def __init__(self, port: int) -> None:
        self.port = port

    async def open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.port, limit=1 << 20)

    async def exchange(self, data: bytes, limit_s: float = 30) -> bytes:
        """Send ``data`` and read until the server closes or answers one response."""
        reader, writer = await self.open()
        try:
            with contextlib.suppress(ConnectionError):
                writer.write(data)
                await writer.drain()
            return await asyncio.wait_for(read_one(reader), limit_s)
        except (ConnectionError, asyncio.IncompleteReadError):
            return b""
        finally:
            writer.close()

    async def healthy(self) -> bool:
        body = json.dumps({"model": MODEL, "input": "still serving?"}).encode()
        resp = await self.exchange(post(body))
        return resp.startswith(b"HTTP/1.1 200 ")


async def read_one(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":")[1])
    return head + await reader.readexactly(length)


def post(body: bytes, model_headers: bytes = b"", key: str = KEY) -> bytes:
    return (
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + key.encode() + b"\r\n" + model_headers
        + b"Content-Length: %d\r\n\r\n" % len(body) + body
    )  # fmt: skip


def status(resp: bytes) -> int:
    if not resp.startswith(b"HTTP/1.1 "):
        return 0  # closed without an answer
    return int(resp.split(b" ", 2)[1])


# --- the cases -----------------------------------------------------------------------------

Case = Callable[[Target, Scale], Awaitable[tuple[str, bool, dict[str, Any]]]]


async def simple(t: Target, raw: bytes, want: int) -> tuple[str, bool, dict[str, Any]]:
    got = status(await t.exchange(raw))
    return f"{got or 'closed'}", got == want, {"status": got}


def raw_case(raw: bytes, want: int) -> Case:
    async def run(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
        return await simple(t, raw, want)

    return run


async def big_url(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    return await streamed(t, b"GET /" , s.big, 414)  # fmt: skip


async def big_header(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    return await streamed(t, b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ", s.big, 431)


async def streamed(
    t: Target, head: bytes, size: int, want: int
) -> tuple[str, bool, dict[str, Any]]:
    """Send ``head`` then up to ``size`` filler bytes; the answer should come early."""
    reader, writer = await t.open()
    sent = 0
    resp = b""
    t0 = time.monotonic()
    try:
        writer.write(head)
        read = asyncio.create_task(read_one(reader))
        with contextlib.suppress(ConnectionError):
            while sent < size and not read.done():
                writer.write(b"a" * 65536)
                sent += 65536
                await writer.drain()
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            resp = await asyncio.wait_for(read, 30)
    finally:
        writer.close()
    got = status(resp)
    detail = {"status": got, "sent_bytes": sent, "answer_s": round(time.monotonic() - t0, 3)}
    return f"{got} after {sent // 1024} KiB", got == want, detail


async def header_flood(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    raw = b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(20000)) + b"\r\n"
    return await simple(t, raw, 431)


async def slowloris(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    conns = [await t.open() for _ in range(s.slowloris)]
    for _, w in conns:
        w.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    served = await t.healthy()  # while they hang
    t0 = time.monotonic()
    answers = await asyncio.gather(
        *(asyncio.wait_for(read_one(r), s.header_timeout + 30) for r, _ in conns),
        return_exceptions=True,
    )
    closed_in = time.monotonic() - t0
    for _, w in conns:
        w.close()
    n408 = sum(1 for a in answers if isinstance(a, bytes) and status(a) == 408)
    ok = served and n408 == len(conns)
    return f"{n408}/{len(conns)} got 408 after {closed_in:.1f}s", ok, {"408": n408}


async def idle(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    conns = []
    refused = 0
    for _ in range(s.idle):
        try:
            conns.append(await t.open())
        except OSError:
            refused += 1
    served = await t.healthy()
    t0 = time.monotonic()
    eofs = await asyncio.gather(
        *(asyncio.wait_for(r.read(), s.header_timeout + 30) for r, _ in conns),
        return_exceptions=True,
    )
    closed = sum(1 for e in eofs if e == b"")
    for _, w in conns:
        w.close()
    took = time.monotonic() - t0
    ok = served and closed == len(conns) and not refused
    return f"{closed}/{len(conns)} closed after {took:.1f}s, served meanwhile", ok, {}


def tcp_autotune_max(name: str) -> int:
    """The most TCP autotuning may grow one socket's buffer to: the third field of
    ``net.ipv4.tcp_rmem`` or ``tcp_wmem``. It differs between hosts (6 MiB and 4 MiB by
    default; 32 MiB of receive buffer on this test bed's VM)."""
    try:
        return int(Path(f"/proc/sys/net/ipv4/{name}").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 32 * 1024 * 1024


async def never_reads(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    # The client's own socket buffers are fixed small (setting SO_RCVBUF and SO_SNDBUF
    # turns autotuning off for that socket), so what backs up is the server's side. Its
    # send buffer fills with answers (about 700 bytes each), then its own write buffer, and
    # it stops reading; then its receive buffer fills with requests (padded to 12 KiB,
    # under the 16 KiB head limit) and the client's sending stalls. Both server buffers
    # may autotune to the host's maximum, so the count is sized from those, with margin.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", t.port))
    reader, writer = await asyncio.open_connection(sock=sock, limit=64 * 1024)
    req = (
        b"GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
        + b"\r\nX-Pad: " + b"p" * (12 * 1024) + b"\r\n\r\n"
    )  # fmt: skip
    answers_to_fill = 2 * tcp_autotune_max("tcp_wmem") // 700
    requests_to_fill = 2 * tcp_autotune_max("tcp_rmem") // len(req)
    count = max(s.pipelined, answers_to_fill + requests_to_fill)
    sent = 0

    async def flood() -> None:
        nonlocal sent
        for _ in range(count):
            writer.write(req)
            sent += 1
            await writer.drain()

    task = asyncio.create_task(flood())
    await asyncio.sleep(3)
    stuck, at = not task.done(), sent
    served = await t.healthy()
    got = 0
    with contextlib.suppress(asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        for _ in range(count):
            await asyncio.wait_for(read_one(reader), 30)
            got += 1
    with contextlib.suppress(Exception):
        await asyncio.wait_for(task, 30)
    writer.close()
    ok = stuck and served and got == count
    return (
        f"sending stalled ({at} of {count} written); all {got} answered once read",
        ok,
        {"at": at, "count": count},
    )


async def held_budget(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    body = json.dumps({"model": SLEEPY, "input": "x" * (8 * 1024 * 1024 - 64)}).encode()
    raw = post(body)
    results = await asyncio.gather(*(t.exchange(raw, 120) for _ in range(s.held)))
    codes: dict[int, int] = {}
    for r in results:
        codes[status(r)] = codes.get(status(r), 0) + 1
    busy = [r for r in results if status(r) == 503 and b"Retry-After" in r]
    ok = bool(busy) and set(codes) <= {200, 503, 413}
    return f"{s.held} x 8 MiB held: {codes}", ok, {"codes": codes}


async def bad_keys(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    body = json.dumps({"model": MODEL, "input": "x"}).encode()
    reqs = [post(body, key=f"gp-guess-{i:024d}") for i in range(s.bad_keys)]
    reqs.append(post(body).replace(b"Authorization: Bearer " + KEY.encode() + b"\r\n", b""))
    got = await asyncio.gather(*(t.exchange(r) for r in reqs))
    n401 = sum(1 for r in got if status(r) == 401 and b"invalid_api_key" in r)
    return f"{n401}/{len(reqs)} got 401 invalid_api_key", n401 == len(reqs), {}


async def head_then_get(t: Target, s: Scale) -> tuple[str, bool, dict[str, Any]]:
    """HEAD gets a head without a body: the next bytes are the next response."""
    reader, writer = await t.open()
    try:
        writer.write(
            b"HEAD /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        second = await asyncio.wait_for(read_one(reader), 10)
    finally:
        writer.close()
    ok = status(head) == 200 and second.startswith(b"HTTP/1.1 200 ") and second.endswith(b"ok\n")
    return f"HEAD {status(head)} without body, then GET {status(second)}", ok, {}


def json_body(body: bytes) -> bytes:
    return post(body)


CASES: dict[str, Case] = {
    "request smuggling (Content-Length and chunked)": raw_case(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    "duplicate Content-Length": raw_case(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n"
        b"Content-Length: 4\r\n\r\nabcd", 400),
    "malformed Content-Length": raw_case(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
    "bad chunk size": raw_case(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n", 400),
    "NUL byte in a header": raw_case(b"GET /healthz HTTP/1.1\r\nHost: x\x00y\r\n\r\n", 400),
    "body over the limit (Content-Length)": raw_case(
        b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
        + b"\r\nContent-Length: 999999999\r\n\r\n", 413),
    "20 MiB URL": big_url,
    "20 MiB header": big_header,
    "header flood (20,000 headers)": header_flood,
    "deeply nested JSON": raw_case(json_body(b"[" * 200_000), 400),
    "8 MiB of empty arrays": raw_case(json_body(b"[" + b"[]," * 2_700_000 + b"[]]"), 400),
    "HEAD then GET, pipelined": head_then_get,
    "invalid API keys": bad_keys,
    "client never reads (pipelined)": never_reads,
    "held bodies over the budget": held_budget,
    "slowloris": slowloris,
    "idle connections": idle,
}  # fmt: skip


# --- running -------------------------------------------------------------------------------


@contextlib.contextmanager
def activator(tmp: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    py = sys.executable
    bport, port = free_port(), free_port()
    backend = subprocess.Popen([py, "-m", "e2e.bench.backend", str(bport)], cwd=ROOT)
    config = tmp / "static.yaml"
    config.write_text(
        json.dumps(
            {
                "services": [
                    {
                        "metadata": {"name": MODEL, "namespace": "bench"},
                        "spec": {"model": {"id": MODEL, "source": {"huggingFace": {}}},
                                 "replicas": 1, "scaling": {"targetConcurrency": 1000}},
                        "endpoints": [f"127.0.0.1:{bport}"],
                    },
                    {
                        "metadata": {"name": SLEEPY, "namespace": "bench"},
                        "spec": {"model": {"id": SLEEPY, "source": {"huggingFace": {}}},
                                 "replicas": 0,
                                 "scaling": {"maxQueuedRequests": 1000,
                                             "activationTimeout": "60s"}},
                        "endpoints": [],
                        "wakeEndpoints": [f"127.0.0.1:{bport}"],
                        "wakeDelaySeconds": 20,
                    },
                ],
                "apiKeys": [{"metadata": {"name": "corpus", "namespace": "bench"},
                             "stringData": {"key": KEY}}],
            }
        )
    )  # fmt: skip
    log = (tmp / "activator.log").open("wb")  # a file: a pipe nobody reads could fill
    proc = subprocess.Popen(
        [py, "-m", "glowplug.cli", "activator", "--host", "127.0.0.1", "--port", str(port),
         "--static-config", str(config), "--auth", "required", "--log-level", "WARNING",
         "--keys-namespace", "bench"],
        cwd=ROOT, stderr=log,
    )  # fmt: skip
    try:
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if proc.poll() is not None:
                err = (tmp / "activator.log").read_text(errors="replace")
                raise RuntimeError(f"activator exited: {err}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield proc, port
    finally:
        for p in (proc, backend):
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        log.close()


async def run_cases(port: int, pid: int, scale: Scale, log: Callable[[str], None]) -> list[Result]:
    t = Target(port)
    out = []
    for name, case in CASES.items():
        t0 = time.monotonic()
        with RssSampler(pid) as rss:
            try:
                outcome, ok, detail = await case(t, scale)
            except Exception as err:  # reported as a failed case
                outcome, ok, detail = f"error: {type(err).__name__}: {err}", False, {}
            healthy = await t.healthy()
        r = Result(
            name, outcome + ("" if healthy else "; NOT SERVING AFTER"), ok and healthy,
            round(rss.before / 2**20, 1), round(rss.peak / 2**20, 1),
            round(time.monotonic() - t0, 2), detail,
        )  # fmt: skip
        log(f"{'ok ' if r.ok else 'BAD'} {name:48s} {r.outcome:50s}"
            f" RSS {r.rss_before_mib:6.1f} -> {r.rss_peak_mib:6.1f} MiB")  # fmt: skip
        out.append(r)
    return out


def run(scale: Scale, log: Callable[[str], None] = print) -> list[Result]:
    with (
        tempfile.TemporaryDirectory(prefix="glowplug-hostile-") as tmp,
        activator(Path(tmp)) as (
            proc,
            port,
        ),
    ):
        return asyncio.run(run_cases(port, proc.pid, scale, log))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--small", action="store_true", help="the test's smaller scale")
    args = ap.parse_args()
    scale = Scale.small() if args.small else Scale()
    print(f"hostile corpus: {len(CASES)} cases, {asdict(scale)}", flush=True)
    results = run(scale, lambda line: print(line, flush=True))
    peak = max(r.rss_peak_mib for r in results)
    print(f"peak RSS {peak:.1f} MiB (the chart's limit: {MEMORY_LIMIT // 2**20} MiB)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"hostile-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"scale": asdict(scale), "results": [asdict(r) for r in results],
                                "load": os.getloadavg()}, indent=2))  # fmt: skip
    print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
