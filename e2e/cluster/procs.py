"""Processes the test bed starts: launched detached, recorded by pid *and* start time.

A pid alone can be reused by an unrelated process after ours exits; the kernel's start
time (field 22 of ``/proc/<pid>/stat``) tells them apart, so stopping never signals a
stranger.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":  # a zombie has exited already
        return None
    return int(fields[19])


@dataclass(frozen=True)
class Proc:
    """One started process: its name, pid and kernel start time."""

    name: str
    pid: int
    start: int

    def alive(self) -> bool:
        return start_time(self.pid) == self.start

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pid": self.pid, "start": self.start}

    @staticmethod
    def from_json(d: dict[str, Any]) -> Proc:
        return Proc(str(d["name"]), int(d["pid"]), int(d["start"]))

    def stop(self, timeout: float = 10.0) -> bool:
        """SIGTERM its process group, wait, then SIGKILL. Returns True if it was running."""
        if not self.alive():
            self._reap()
            return False
        self._signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.alive():
            time.sleep(0.05)
        if self.alive():
            self._signal(signal.SIGKILL)
            for _ in range(100):
                if not self.alive():
                    break
                time.sleep(0.05)
        self._reap()
        return True

    def _reap(self) -> None:
        # When this process started it (pytest fixture), collect the exit status so no
        # zombie lingers; otherwise it is not our child and there is nothing to collect.
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.pid, os.WNOHANG)

    def _signal(self, sig: signal.Signals) -> None:
        # Each component leads its own session (start_new_session), so its group id is its
        # pid; signalling the group also reaches helpers it forked.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(self.pid) == self.pid:
                os.killpg(self.pid, sig)
            else:
                os.kill(self.pid, sig)


def launch(
    name: str,
    argv: list[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Proc:
    """Start ``argv`` detached (own session, stdin closed, output to ``log_path``)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            cwd=cwd,
        )
    st = start_time(p.pid)
    if st is None:
        raise RuntimeError(f"{name} exited at once; see {log_path}")
    # The Popen object is dropped on purpose: the process outlives this one (make cluster-up
    # returns while the cluster keeps running). Mark it as waited-for so Python does not warn.
    p.returncode = 0
    return Proc(name, p.pid, st)
