"""A real redis-server for tests: Debian's binary, extracted by scripts/install-redis.sh,
listening on 127.0.0.1 with a password and no persistence; stopped by pid."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "test-only-password"


class RedisUnavailable(RuntimeError):
    """scripts/install-redis.sh could not provide a redis-server here."""


def redis_server_binary() -> str:
    """The extracted redis-server (cached under ~/.cache/glowplug/tools)."""
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/install-redis.sh")], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise RedisUnavailable(proc.stderr.strip()[-300:])
    return proc.stdout.strip().splitlines()[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    def __init__(self, binary: str, port: int = 0, password: str = PASSWORD) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.password = password
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.TemporaryDirectory(prefix="glowplug-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--requirepass", self.password, "--dir", self._dir.name],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.01)
        self.stop()
        raise RuntimeError(f"redis-server did not listen on 127.0.0.1:{self.port}")

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
            self.proc = None

    def close(self) -> None:
        self.stop()
        self._dir.cleanup()
