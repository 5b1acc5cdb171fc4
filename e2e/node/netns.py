"""Pod networking of the test bed: one network namespace and veth pair per pod.

The host end of every veth carries ``host_ip``/32 (the pods' gateway and the address at
which they reach the API server); the pod end is ``eth0`` with the pod's IP. A /32 route
per pod on the host plus ``net.ipv4.ip_forward=1`` lets the host reach every pod and pods
reach each other through the host. Every namespace made is recorded as a file under
``<state>/netns/`` before it is created, so a killed agent's leftovers can be swept.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

NETNS_PREFIX = "gp-"


@dataclass(frozen=True)
class PodNet:
    netns: str
    veth: str
    ip: str

    def to_json(self) -> str:
        return json.dumps({"netns": self.netns, "veth": self.veth, "ip": self.ip})


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def names_for(uid: str) -> tuple[str, str, str]:
    """(netns, host veth, temporary peer name) for a pod uid; interface names <= 15 chars."""
    short = uid.replace("-", "")[:11]
    return f"{NETNS_PREFIX}{short}", f"gpv{short}", f"gpp{short}"


def create(record_dir: Path, uid: str, pod_ip: str, host_ip: str) -> PodNet:
    netns, veth, peer = names_for(uid)
    net = PodNet(netns, veth, pod_ip)
    record_dir.mkdir(parents=True, exist_ok=True)
    (record_dir / netns).write_text(net.to_json())
    destroy(net)  # leftovers of an earlier life of the same pod
    try:
        _ip("netns", "add", netns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", peer)
        _ip("link", "set", peer, "netns", netns)
        _ip("addr", "add", f"{host_ip}/32", "dev", veth)
        _ip("link", "set", veth, "up")
        _ip("-n", netns, "link", "set", "lo", "up")
        _ip("-n", netns, "link", "set", peer, "name", "eth0")
        # A /32, not the pod CIDR: with an on-link /16 a pod would ARP for its peers
        # directly and nobody would answer; everything goes through the host instead.
        _ip("-n", netns, "addr", "add", f"{pod_ip}/32", "dev", "eth0")
        _ip("-n", netns, "link", "set", "eth0", "up")
        _ip("-n", netns, "route", "add", f"{host_ip}/32", "dev", "eth0")
        _ip("-n", netns, "route", "add", "default", "via", host_ip, "dev", "eth0")
        _ip("route", "replace", f"{pod_ip}/32", "dev", veth, "src", host_ip)
    except subprocess.CalledProcessError as e:
        destroy(net)
        (record_dir / netns).unlink(missing_ok=True)
        raise RuntimeError(f"pod network setup failed: {e.cmd}: {e.stderr.strip()}") from e
    return net


def pids_in(netns: str) -> list[int]:
    out = _ip("netns", "pids", netns, check=False)
    return [int(x) for x in out.stdout.split() if x.isdigit()]


def destroy(net: PodNet) -> None:
    """Kill anything still inside the namespace, then remove it and the veth."""
    for pid in pids_in(net.netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    _ip("netns", "del", net.netns, check=False)
    _ip("link", "del", net.veth, check=False)
    _ip("route", "del", f"{net.ip}/32", check=False)


def recorded(record_dir: Path) -> Iterator[tuple[Path, PodNet]]:
    if not record_dir.exists():
        return
    for f in sorted(record_dir.iterdir()):
        try:
            d = json.loads(f.read_text())
            yield f, PodNet(d["netns"], d["veth"], d["ip"])
        except (OSError, ValueError, KeyError):
            f.unlink(missing_ok=True)


def release(record_dir: Path, net: PodNet) -> None:
    destroy(net)
    (record_dir / net.netns).unlink(missing_ok=True)


def sweep_recorded(agent_dir: Path) -> list[str]:
    """Remove every namespace the agent recorded (used after a crash or kill)."""
    lines = []
    record_dir = agent_dir / "netns"
    existing = set(_ip("netns", "list", check=False).stdout.split())
    for f, net in list(recorded(record_dir)):
        if net.netns in existing:
            pids = pids_in(net.netns)
            lines.append(f"removing leftover netns {net.netns} (killing pids {pids})")
        destroy(net)
        f.unlink(missing_ok=True)
    return lines


class IpPool:
    """Pod IPs from the pod CIDR, skipping the network, gateway and broadcast addresses."""

    def __init__(self, cidr: str, host_ip: str) -> None:
        self.net = ipaddress.ip_network(cidr)
        self.host_ip = ipaddress.ip_address(host_ip)
        self.used: set[str] = set()
        # A second agent (the node-provisioner double's) gets a sub-range of the pod CIDR
        # that does not hold the shared host IP: start at its first address then.
        start = self.host_ip if self.host_ip in self.net else self.net.network_address
        self._next = int(start) + 1

    @property
    def prefix_len(self) -> int:
        return self.net.prefixlen

    def allocate(self) -> str:
        # Round-robin, so a released address is not handed out again at once (stale
        # EndpointSlices or clients would otherwise reach the wrong pod).
        size = self.net.num_addresses
        for _ in range(size):
            cand = ipaddress.ip_address(self._next)
            self._next += 1
            if self._next >= int(self.net.broadcast_address):
                self._next = int(self.net.network_address) + 1
            s = str(cand)
            if cand == self.host_ip or cand not in self.net or s in self.used:
                continue
            if cand in (self.net.network_address, self.net.broadcast_address):
                continue
            self.used.add(s)
            return s
        raise RuntimeError(f"pod CIDR {self.net} exhausted")

    def release(self, ip: str) -> None:
        self.used.discard(ip)
