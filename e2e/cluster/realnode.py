"""The test bed's real node: containerd + runc, a real kubelet and kube-proxy.

Beside the process node agent, ``Cluster.up()`` starts one real node (unless
``GLOWPLUG_REAL_NODE=0``): containerd and runc from Debian (``scripts/install-node-deps.sh``),
the kubelet and kube-proxy built from the same wrapper module as the control plane, CNI
``bridge`` + ``host-local`` on a bridge of its own, and images built here
(``e2e.cluster.images``) imported into its containerd, since no registry is reachable.
The settings this machine needs are in ``../shared/reference/real-node.md`` (cgroup v1
opt-in, ``restrict_oom_score_adj``, kube-proxy leaving conntrack sysctls alone).

The node is tainted ``glowplug.dev/real-node=true:NoSchedule`` and labelled
``glowplug.dev/node=real``: only pods that ask for it (toleration + nodeSelector, see
``scheduling()``) run here; everything else stays on the process node, labelled
``glowplug.dev/node=process``.

What the kubelet, CNI and kube-proxy change on the host is recorded before ``up`` (sysctls,
iptables chains, ip_forward; ``HostSnapshot``) and put back by ``down``, which also stops
every container, removes the sandboxes' network namespaces, the bridge, the mounts under
the node's directory and the cgroups the kubelet made.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster.images import Builder, Image
from e2e.cluster.pki import Pki, ensure_client_cert
from e2e.cluster.procs import Proc, launch

Log = Callable[[str], None]
TAINT_KEY = "glowplug.dev/real-node"
NODE_LABEL = "glowplug.dev/node"
COMPONENTS = ("containerd", "kubelet", "kube-proxy")
CNI_BIN = Path(os.environ.get("GLOWPLUG_CNI_BIN_DIR", "/usr/lib/cni"))
# The kubelet sets these when protectKernelDefaults is false; CNI's bridge turns on
# ip_forward; kube-proxy would set route_localnet (off here: localhostNodePorts false).
SYSCTLS = (
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.route_localnet",
    "net.bridge.bridge-nf-call-iptables",
    "net.netfilter.nf_conntrack_max",
)
# One real node per machine (kube-proxy's chains and the bridge are machine-wide): the
# running one is recorded here, with its containerd's pid and start time.
CLAIM = Path(os.environ.get("GLOWPLUG_REAL_NODE_CLAIM", "/run/glowplug/realnode.json"))
# Interfaces and namespaces that process node agents (of any test bed on this machine)
# make and remove on their own: not the real node's business.
AGENT_LINK = re.compile(r"^gp[vp][0-9a-f]+$")


def scheduling() -> dict[str, Any]:
    """The pod-spec fields that put a pod on the real node."""
    return {
        "nodeSelector": {NODE_LABEL: "real"},
        "tolerations": [
            {"key": TAINT_KEY, "operator": "Equal", "value": "true", "effect": "NoSchedule"}
        ],
    }


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, str(default)))


@dataclass
class RealNodeConfig:
    """The real node's names, addresses and ports; every one overridable by environment."""

    enabled: bool = field(default_factory=lambda: os.environ.get("GLOWPLUG_REAL_NODE", "1") != "0")
    name: str = field(
        default_factory=lambda: os.environ.get("GLOWPLUG_REAL_NODE_NAME", "glowplug-realnode")
    )
    bridge: str = field(
        default_factory=lambda: os.environ.get("GLOWPLUG_REAL_NODE_BRIDGE", "glowplug0")
    )
    # Pods get addresses here; the bridge holds the first one, which is the node's IP.
    subnet: str = field(
        default_factory=lambda: os.environ.get("GLOWPLUG_REAL_NODE_SUBNET", "10.88.0.0/24")
    )
    kubelet_port: int = field(default_factory=lambda: _env_int("GLOWPLUG_REAL_KUBELET_PORT", 10350))
    kubelet_healthz_port: int = field(
        default_factory=lambda: _env_int("GLOWPLUG_REAL_KUBELET_HEALTHZ_PORT", 10348)
    )
    proxy_metrics_port: int = field(
        default_factory=lambda: _env_int("GLOWPLUG_KUBE_PROXY_METRICS_PORT", 10349)
    )
    proxy_healthz_port: int = field(
        default_factory=lambda: _env_int("GLOWPLUG_KUBE_PROXY_HEALTHZ_PORT", 10356)
    )
    # Fake nvidia.com/gpu capacity (patched into the node status) so that engine pods,
    # which ask for GPUs, can be scheduled here too; nothing uses a GPU.
    gpus: int = field(default_factory=lambda: _env_int("GLOWPLUG_REAL_NODE_GPUS", 4))

    @property
    def node_ip(self) -> str:
        return str(next(ipaddress.ip_network(self.subnet).hosts()))

    @property
    def prefix(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


def missing_prerequisites(bin_dir: Path) -> list[str]:
    """What this machine lacks for a real node (empty when it has everything)."""
    missing = [
        t for t in ("containerd", "runc", "ctr", "iptables", "conntrack") if not shutil.which(t)
    ]
    missing += [
        f"{CNI_BIN}/{p}" for p in ("bridge", "host-local", "loopback") if not (CNI_BIN / p).exists()
    ]
    missing += [str(bin_dir / b) for b in ("kubelet", "kube-proxy") if not (bin_dir / b).exists()]
    return missing


# -- the host: what the node changes, recorded and compared ---------------------------------


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _read_sysctls() -> dict[str, str]:
    out = {}
    for name in SYSCTLS:
        with contextlib.suppress(OSError):
            out[name] = _sysctl_path(name).read_text().strip()
    return out


BUILTIN_CHAINS = {"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}


def _iptables_rules(cmd: str) -> list[str]:
    """``iptables-save`` as ``table :CHAIN`` (user chains) and ``table -A ...`` (rules)
    lines: no counters, and no built-in chains or empty tables, which loading the
    iptables modules creates and nothing can remove (they accept everything)."""
    if not shutil.which(cmd):
        return []
    out = subprocess.run([cmd], capture_output=True, text=True, check=False).stdout
    rules, table = [], ""
    for line in out.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith(":"):
            chain = line.split()[0][1:]
            if chain not in BUILTIN_CHAINS:
                rules.append(f"{table} :{chain}")
        elif line.startswith("-A"):
            rules.append(f"{table} {line}")
    return rules


def _links() -> list[str]:
    out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=False).stdout
    names = [line.split(":")[1].strip().split("@")[0] for line in out.splitlines() if ":" in line]
    return sorted(n for n in names if not AGENT_LINK.match(n))


def _netns() -> list[str]:
    from e2e.node.netns import NETNS_PREFIX

    root = Path("/run/netns")
    names = [p.name for p in root.iterdir()] if root.exists() else []
    return sorted(n for n in names if not n.startswith(NETNS_PREFIX))


def _kubelet_cgroups() -> list[str]:
    root = Path("/sys/fs/cgroup")
    return sorted(str(p) for p in root.glob("*/kubepods"))


@dataclass(frozen=True)
class HostSnapshot:
    """The host state a real node touches. Two snapshots compare equal when a node's
    ``down`` put everything back (other test beds' pod veths and netns are left out)."""

    sysctls: dict[str, str]
    iptables: list[str]
    ip6tables: list[str]
    links: list[str]
    netns: list[str]
    cgroups: list[str]

    @staticmethod
    def take() -> HostSnapshot:
        return HostSnapshot(
            _read_sysctls(),
            _iptables_rules("iptables-save"),
            _iptables_rules("ip6tables-save"),
            _links(),
            _netns(),
            _kubelet_cgroups(),
        )

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @staticmethod
    def from_json(d: dict[str, Any]) -> HostSnapshot:
        return HostSnapshot(
            dict(d["sysctls"]),
            list(d["iptables"]),
            list(d["ip6tables"]),
            list(d["links"]),
            list(d["netns"]),
            list(d.get("cgroups", [])),
        )

    def diff(self, other: HostSnapshot) -> list[str]:
        """Human-readable differences from ``self`` (before) to ``other`` (after)."""
        out = []
        for k in sorted(set(self.sysctls) | set(other.sysctls)):
            if self.sysctls.get(k) != other.sysctls.get(k):
                out.append(f"sysctl {k}: {self.sysctls.get(k)} -> {other.sysctls.get(k)}")
        for name in ("iptables", "ip6tables", "links", "netns", "cgroups"):
            a, b = getattr(self, name), getattr(other, name)
            out += [f"{name}: + {x}" for x in b if x not in a]
            out += [f"{name}: - {x}" for x in a if x not in b]
        return out


# -- the node ---------------------------------------------------------------------------------


class RealNode:
    """One real node of the test bed, its files under ``<state>/realnode``."""

    def __init__(
        self,
        state_dir: Path,
        config: RealNodeConfig,
        *,
        bin_dir: Path,
        pki: Pki,
        server: str,
        apiserver_port: int,
        api: Callable[..., Any],
        log: Log,
    ) -> None:
        self.config = config
        self.dir = state_dir / "realnode"
        self.bin_dir = bin_dir
        self.pki = pki
        self.server = server
        self.apiserver_port = apiserver_port
        self.api = api
        self.log = log
        self.images: list[Image] = []

    # -- paths ----------------------------------------------------------------------------

    @property
    def socket(self) -> Path:
        return self.dir / "containerd" / "containerd.sock"

    @property
    def snapshot_path(self) -> Path:
        return self.dir / "host.before.json"

    def ctr(self, *args: str, check: bool = True, timeout: float = 300) -> str:
        proc = subprocess.run(
            ["ctr", "--address", str(self.socket), "--namespace", "k8s.io", *args],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and proc.returncode != 0:
            raise RuntimeError(f"ctr {' '.join(args[:3])} exited {proc.returncode}: {proc.stderr}")
        return proc.stdout

    # -- one per machine --------------------------------------------------------------------

    def other_owner(self) -> str | None:
        """The state directory of another test bed whose real node is running on this
        machine, or None (no claim, a stale one, or our own)."""
        try:
            claim = json.loads(CLAIM.read_text())
        except (OSError, ValueError):
            return None
        if claim.get("state_dir") == str(self.dir.parent):
            return None
        try:
            alive = Proc.from_json(claim["containerd"]).alive()
        except (KeyError, TypeError, ValueError):
            return None
        return str(claim.get("state_dir")) if alive else None

    def _claim(self, containerd: Proc) -> None:
        CLAIM.parent.mkdir(parents=True, exist_ok=True)
        tmp = CLAIM.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(
            json.dumps({"state_dir": str(self.dir.parent), "containerd": containerd.to_json()})
        )
        tmp.replace(CLAIM)

    def _release_claim(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            if json.loads(CLAIM.read_text()).get("state_dir") == str(self.dir.parent):
                CLAIM.unlink()

    def _containerd_serving(self) -> bool:
        # `ctr version` prints the client's version even when the server does not answer:
        # only its exit status says whether containerd serves.
        probe = subprocess.run(
            ["ctr", "--address", str(self.socket), "version"], capture_output=True, timeout=10
        )
        return probe.returncode == 0

    # -- up -----------------------------------------------------------------------------------

    def prepare(self) -> None:
        """Build or reuse the images (slow the first time); nothing is started yet."""
        missing = missing_prerequisites(self.bin_dir)
        if missing:
            raise FileNotFoundError(
                f"the real node needs {', '.join(missing)}: run `make node-deps binaries` "
                "(or set GLOWPLUG_REAL_NODE=0 for the process node only)"
            )
        self.images = Builder(self.log).all()

    def start(self, record: Callable[[Proc], None], alive: Callable[[], None]) -> None:
        """Start containerd, the kubelet and kube-proxy; ``record`` each process as it
        starts; ``alive()`` raises when a recorded process died. Returns when the node is
        Ready with its images imported."""
        cfg = self.config
        t0 = time.monotonic()
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.snapshot_path.exists():  # else: a crashed run's snapshot, still the truth
            self.snapshot_path.write_text(json.dumps(HostSnapshot.take().to_json(), indent=1))
        logs = self.dir.parent / "logs"
        self._bridge_up()
        self._write_configs()

        containerd = launch(
            "containerd", ["containerd", "--config", str(self.dir / "containerd.toml")],
            logs / "containerd.log",
        )  # fmt: skip
        record(containerd)
        self._claim(containerd)
        self._wait(self._containerd_serving, 30, "containerd", alive)
        self._import_images()
        self.log(f"containerd up, images imported ({time.monotonic() - t0:.1f} s)")
        record(
            launch(
                "kubelet",
                [
                    str(self.bin_dir / "kubelet"),
                    f"--config={self.dir / 'kubelet.yaml'}",
                    f"--kubeconfig={self.dir / 'kubelet.kubeconfig'}",
                    f"--root-dir={self.dir / 'kubelet'}",
                    f"--cert-dir={self.dir / 'kubelet' / 'pki'}",
                    f"--hostname-override={cfg.name}",
                    f"--node-ip={cfg.node_ip}",
                    f"--node-labels={NODE_LABEL}=real",
                    "--v=1",
                ],
                logs / "kubelet.log",
            )
        )
        record(
            launch(
                "kube-proxy",
                [
                    str(self.bin_dir / "kube-proxy"),
                    f"--config={self.dir / 'kube-proxy.yaml'}",
                    "--v=1",
                ],
                logs / "kube-proxy.log",
            )
        )
        # A node object from an earlier start may still say Ready: wait for a heartbeat
        # of this kubelet, and for kube-proxy's first sync of the Service rules.
        since = time.time() - 1
        self._wait(lambda: self._ready(since), 120, f"node {cfg.name} Ready", alive)
        self._wait(self._proxy_synced, 60, "kube-proxy /healthz", alive)
        # A node object kept from an earlier start may still be cordoned by its drain.
        self.api(
            "PATCH",
            f"/api/v1/nodes/{cfg.name}",
            {"spec": {"unschedulable": None}},
            content_type="application/strategic-merge-patch+json",
        )
        self._advertise_gpus()
        self._route_kubernetes_service()
        self.log(f"real node {cfg.name} Ready ({time.monotonic() - t0:.1f} s)")

    def _bridge_up(self) -> None:
        cfg = self.config
        ip = ["ip"]
        if subprocess.run([*ip, "link", "show", cfg.bridge], capture_output=True).returncode != 0:
            subprocess.run([*ip, "link", "add", cfg.bridge, "type", "bridge"], check=True)
        subprocess.run(
            [*ip, "addr", "replace", f"{cfg.node_ip}/{cfg.prefix}", "dev", cfg.bridge], check=True
        )
        subprocess.run([*ip, "link", "set", cfg.bridge, "up"], check=True)

    def _write_configs(self) -> None:
        cfg = self.config
        d = self.dir
        for sub in ("containerd", "cni/net.d", "cni/ipam", "kubelet", "pod-logs"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        pause = next((i.ref for i in self.images if i.name == "pause"), "")
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        (d / "containerd.toml").write_text(
            f"""# Written by e2e/cluster/realnode.py: a private containerd for the test bed.
version = 2
root = "{d / "containerd" / "root"}"
state = "{d / "containerd" / "state"}"
[grpc]
  address = "{self.socket}"
[ttrpc]
  address = "{self.socket}.ttrpc"
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d / "containerd" / "opt"}"
[{cri}]
  sandbox_image = "{pause}"
  # The runtime lacks CAP_SYS_RESOURCE here: without this, sandboxes fail to start
  # ("can't get final child's PID from pipe: EOF") on oom_score_adj -998.
  restrict_oom_score_adj = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
[{cri}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"
[{cri}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[{cri}.containerd.runtimes.runc.options]
  SystemdCgroup = false
[{cri}.cni]
  bin_dir = "{CNI_BIN}"
  conf_dir = "{d / "cni" / "net.d"}"
  max_conf_num = 1
"""
        )
        conflist = {
            "cniVersion": "0.4.0",
            "name": "glowplug-realnode",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": cfg.bridge,
                    "isGateway": True,
                    "hairpinMode": True,
                    # Pods reach the host and the process node's pods by routing; nothing
                    # here leaves the machine, so no masquerading rules are added.
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": cfg.subnet, "gateway": cfg.node_ip}]],
                        "routes": [{"dst": "0.0.0.0/0"}],
                        "dataDir": str(d / "cni" / "ipam"),
                    },
                }
            ],
        }
        (d / "cni" / "net.d" / "10-glowplug.conflist").write_text(json.dumps(conflist, indent=2))

        kubelet_crt, kubelet_key = ensure_client_cert(
            self.pki, "realnode-kubelet", f"/O=system:nodes/CN=system:node:{cfg.name}"
        )
        proxy_crt, proxy_key = ensure_client_cert(
            self.pki, "realnode-kube-proxy", "/CN=system:kube-proxy"
        )
        self._kubeconfig(d / "kubelet.kubeconfig", kubelet_crt, kubelet_key)
        self._kubeconfig(d / "kube-proxy.kubeconfig", proxy_crt, proxy_key)
        kubelet = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            # Kubernetes 1.35 refuses cgroup v1 unless told otherwise; this machine has v1.
            "failCgroupV1": False,
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.socket}",
            # The API server reaches the kubelet (logs, exec) on the node IP, the bridge.
            "address": cfg.node_ip,
            "port": cfg.kubelet_port,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": cfg.kubelet_healthz_port,
            "authentication": {
                "x509": {"clientCAFile": str(self.pki.ca_crt)},
                "webhook": {"enabled": False},
                "anonymous": {"enabled": False},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
            # No eviction: the machine is shared and its free memory says nothing about us.
            "evictionHard": {},
            # No registry to pull an image back from: never garbage-collect images.
            "imageGCHighThresholdPercent": 100,
            "imageGCLowThresholdPercent": 99,
            "failSwapOn": False,
            "podLogsDir": str(d / "pod-logs"),
            "clusterDomain": "cluster.local",
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
            "maxPods": 30,
        }
        (d / "kubelet.yaml").write_text(json.dumps(kubelet, indent=2))
        proxy = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "clientConnection": {"kubeconfig": str(d / "kube-proxy.kubeconfig")},
            "hostnameOverride": cfg.name,
            "mode": "iptables",
            "clusterCIDR": cfg.subnet,
            "metricsBindAddress": f"127.0.0.1:{cfg.proxy_metrics_port}",
            "healthzBindAddress": f"127.0.0.1:{cfg.proxy_healthz_port}",
            # NodePorts only on the node IP, never on the host's other addresses.
            "nodePortAddresses": [f"{cfg.node_ip}/32"],
            # localhostNodePorts would set net.ipv4.conf.all.route_localnet=1.
            "iptables": {"localhostNodePorts": False, "masqueradeAll": False},
            # Zeros: kube-proxy leaves the host's conntrack sysctls alone.
            "conntrack": {
                "maxPerCore": 0,
                "min": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        (d / "kube-proxy.yaml").write_text(json.dumps(proxy, indent=2))

    def _kubeconfig(self, path: Path, crt: Path, key: Path) -> None:
        kc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "testbed",
                    "cluster": {
                        "server": self.server,
                        "certificate-authority": str(self.pki.ca_crt),
                    },
                }
            ],
            "users": [
                {"name": "node", "user": {"client-certificate": str(crt), "client-key": str(key)}}
            ],
            "contexts": [{"name": "testbed", "context": {"cluster": "testbed", "user": "node"}}],
            "current-context": "testbed",
        }
        path.write_text(json.dumps(kc, indent=2))
        path.chmod(0o600)

    def _import_images(self) -> None:
        present = set(self.ctr("images", "list", "--quiet").split())
        record = self.dir / "imported.json"
        done: dict[str, str] = json.loads(record.read_text()) if record.exists() else {}
        for img in self.images:
            if img.ref in present and done.get(img.ref) == img.key:
                continue
            t0 = time.monotonic()
            # --no-unpack would defer unpacking to the first pod; unpack now, once.
            self.ctr("images", "import", "--snapshotter", "overlayfs", str(img.archive))
            done[img.ref] = img.key
            record.write_text(json.dumps(done, indent=1))
            self.log(
                f"imported {img.ref} into the node's containerd ({time.monotonic() - t0:.1f} s)"
            )

    def _wait(
        self, cond: Callable[[], bool], timeout: float, what: str, alive: Callable[[], None]
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            alive()
            time.sleep(0.3)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def node(self) -> dict[str, Any] | None:
        try:
            return dict(self.api("GET", f"/api/v1/nodes/{self.config.name}"))
        except (urllib.error.URLError, OSError):
            return None

    def _ready(self, since: float) -> bool:
        from datetime import datetime

        node = self.node()
        if node is None:
            return False
        for c in node.get("status", {}).get("conditions", []):
            if c["type"] == "Ready" and c["status"] == "True":
                beat = datetime.fromisoformat(c["lastHeartbeatTime"].replace("Z", "+00:00"))
                return beat.timestamp() >= since
        return False

    def _proxy_synced(self) -> bool:
        url = f"http://127.0.0.1:{self.config.proxy_healthz_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def _advertise_gpus(self) -> None:
        # An extended resource a node advertises by a status patch (the documented way to
        # advertise resources no device plugin manages); the kubelet keeps it.
        if self.config.gpus <= 0:
            return
        self.api(
            "PATCH",
            f"/api/v1/nodes/{self.config.name}/status",
            {"status": {"capacity": {"nvidia.com/gpu": str(self.config.gpus)}}},
            content_type="application/strategic-merge-patch+json",
        )

    def _route_kubernetes_service(self) -> None:
        """Give the ``kubernetes`` Service an endpoint (the API server is started with
        ``--endpoint-reconciler-type=none``): the node IP, where the API server also listens,
        so that in-cluster clients on this node reach it through kube-proxy at 10.96.0.1.
        The API server's certificate names the Service IP, which is what clients verify."""
        body = {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": "kubernetes-testbed",
                "namespace": "default",
                "labels": {
                    "kubernetes.io/service-name": "kubernetes",
                    "endpointslice.kubernetes.io/managed-by": "glowplug-testbed",
                },
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [self.config.node_ip], "conditions": {"ready": True}}],
            "ports": [{"name": "https", "port": self.apiserver_port, "protocol": "TCP"}],
        }
        with contextlib.suppress(urllib.error.HTTPError):
            self.api(
                "DELETE",
                "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices/kubernetes-testbed",
            )
        self.api("POST", "/apis/discovery.k8s.io/v1/namespaces/default/endpointslices", body)

    # -- down ------------------------------------------------------------------------------------

    def drain(self, timeout: float = 60) -> None:
        """Delete the pods bound to this node and wait for the kubelet to stop them (their
        sandboxes, veths and netns go with them). Needs the API server and the kubelet."""
        try:
            pods = self.api("GET", f"/api/v1/pods?fieldSelector=spec.nodeName={self.config.name}")
        except (urllib.error.URLError, OSError):
            return
        items = pods.get("items") or []
        if items:
            # Cordon first: the pods' controllers recreate them at once, and the scheduler
            # must not put the replacements back here (they wait Pending instead).
            with contextlib.suppress(urllib.error.URLError, OSError):
                self.api(
                    "PATCH",
                    f"/api/v1/nodes/{self.config.name}",
                    {"spec": {"unschedulable": True}},
                    content_type="application/strategic-merge-patch+json",
                )
        for p in items:
            meta = p["metadata"]
            with contextlib.suppress(urllib.error.URLError, OSError):
                self.api(
                    "DELETE",
                    f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                    {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 2},
                )
        if items:
            self.log(f"deleting {len(items)} pod(s) on {self.config.name}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                left = self.api(
                    "GET", f"/api/v1/pods?fieldSelector=spec.nodeName={self.config.name}"
                )
            except (urllib.error.URLError, OSError):
                return
            if not left.get("items"):
                return
            time.sleep(0.5)
        self.log(
            f"WARNING: pods still on {self.config.name} after {timeout:.0f} s; stopping anyway"
        )

    def stop(self, procs: dict[str, Proc]) -> None:
        """Stop the node's processes and put the host back as the snapshot found it."""
        self.dir.mkdir(parents=True, exist_ok=True)
        p = procs.get("kube-proxy")
        if p is not None and p.stop(10):
            self.log(f"stopped kube-proxy (pid {p.pid})")
        if (self.bin_dir / "kube-proxy").exists():
            # Removes every chain and rule kube-proxy made (iptables, ip6tables, ipvs, nft).
            subprocess.run(
                [str(self.bin_dir / "kube-proxy"), "--cleanup", "--v=0"],
                capture_output=True, check=False, timeout=60,
            )  # fmt: skip
        p = procs.get("kubelet")
        if p is not None and p.stop(20):
            self.log(f"stopped kubelet (pid {p.pid})")
        containerd = procs.get("containerd")
        if containerd is not None and containerd.alive():
            self._kill_containers()
        if containerd is not None and containerd.stop(15):
            self.log(f"stopped containerd (pid {containerd.pid})")
        self._restore_host()
        self._release_claim()

    def _kill_containers(self) -> None:
        """Whatever the kubelet left running (it was killed, or the drain timed out)."""
        listing = self.ctr("tasks", "list", check=False).splitlines()[1:]
        tasks = [line.split()[0] for line in listing if line.strip()]
        for t in tasks:
            self.ctr("tasks", "kill", "--signal", "SIGKILL", t, check=False, timeout=30)
        deadline = time.monotonic() + 10
        left = list(tasks)
        while left and time.monotonic() < deadline:
            for t in list(left):
                done = subprocess.run(
                    ["ctr", "--address", str(self.socket), "--namespace", "k8s.io",
                     "tasks", "delete", t],
                    capture_output=True, timeout=30,
                )  # fmt: skip
                if done.returncode == 0:
                    left.remove(t)
            time.sleep(0.2)
        if tasks:
            self.log(f"killed {len(tasks) - len(left)} container(s) the kubelet left behind")

    def _kill_leftovers(self, before: HostSnapshot | None) -> None:
        """After a crash (containerd or the kubelet killed): the containers still run,
        holding their network namespaces, veths and cgroups. Kill every process in the
        kubelet's cgroups (those the snapshot did not have) and this containerd's shims."""
        roots = [cg for cg in _kubelet_cgroups() if before is None or cg not in before.cgroups]
        deadline = time.monotonic() + 10
        killed = 0
        while time.monotonic() < deadline:
            pids = _cgroup_pids(roots) + _shim_pids(self.socket)
            if not pids:
                break
            killed += len(pids)
            _signal_all(pids)
            time.sleep(0.2)
        if killed:
            self.log(f"killed {killed} leftover container process(es)")

    def _restore_host(self) -> None:
        before = (
            HostSnapshot.from_json(json.loads(self.snapshot_path.read_text()))
            if self.snapshot_path.exists()
            else None
        )
        self._kill_leftovers(before)
        # Mounts under the node's directory (rootfs overlays, /dev/shm of sandboxes, the
        # kubelet's volumes), deepest first.
        mounts = []
        for line in Path("/proc/mounts").read_text().splitlines():
            target = line.split()[1].replace("\\040", " ")
            if target.startswith(str(self.dir) + "/"):
                mounts.append(target)
        for target in sorted(set(mounts), key=len, reverse=True):
            subprocess.run(["umount", "-l", target], capture_output=True, check=False)
        if mounts:
            self.log(f"unmounted {len(set(mounts))} leftover mount(s)")
        if before is not None:
            # Network namespaces the sandboxes made (CRI names them cni-<uuid>).
            for ns in _netns():
                if ns not in before.netns and ns.startswith("cni-"):
                    subprocess.run(["ip", "netns", "delete", ns], capture_output=True, check=False)
        if (
            subprocess.run(
                ["ip", "link", "show", self.config.bridge], capture_output=True
            ).returncode
            == 0
        ):
            subprocess.run(
                ["ip", "link", "delete", self.config.bridge], capture_output=True, check=False
            )
            self.log(f"deleted bridge {self.config.bridge}")
        if before is None:
            return
        # Chains the kubelet made (KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-IPTABLES-HINT) and
        # any KUBE-* chain kube-proxy --cleanup missed: only those absent before.
        for cmd, rules in (("iptables", before.iptables), ("ip6tables", before.ip6tables)):
            _delete_new_kube_chains(cmd, rules)
        for name, value in before.sysctls.items():
            path = _sysctl_path(name)
            with contextlib.suppress(OSError):
                if path.read_text().strip() != value:
                    path.write_text(value + "\n")
                    self.log(f"restored {name} = {value}")
        for cg in _kubelet_cgroups():
            if cg not in before.cgroups:
                _remove_cgroup_tree(Path(cg))
        shutil.rmtree(self.dir / "cni" / "ipam", ignore_errors=True)
        shutil.rmtree(self.dir / "containerd" / "state", ignore_errors=True)
        self.snapshot_path.unlink(missing_ok=True)


def _signal_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _shim_pids(socket: Path) -> list[int]:
    """containerd-shim processes serving the containerd at ``socket`` (and no other)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv and b"containerd-shim" in argv[0] and str(socket).encode() in argv:
                pids.append(int(proc.name))
    return pids


def _cgroup_pids(roots: list[str]) -> list[int]:
    pids: set[int] = set()
    for root in roots:
        for procs in Path(root).rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids.update(int(x) for x in procs.read_text().split())
    return sorted(pids)


def _delete_new_kube_chains(cmd: str, before: list[str]) -> None:
    """Delete the KUBE-* chains (and the rules jumping to them) that ``before`` lacked."""
    if not shutil.which(cmd):
        return

    def chains(rules: list[str]) -> set[tuple[str, str]]:
        return {(r.split()[0], r.split()[1][1:]) for r in rules if r.split()[1].startswith(":")}

    new = sorted(
        (t, c) for t, c in chains(_iptables_rules(f"{cmd}-save")) - chains(before)
        if c.startswith("KUBE-")
    )  # fmt: skip
    for table, chain in new:
        rules = subprocess.run([cmd, "-t", table, "-S"], capture_output=True, text=True).stdout
        for rule in rules.splitlines():
            words = shlex.split(rule)
            if words[:1] == ["-A"] and "-j" in words and words[words.index("-j") + 1] == chain:
                subprocess.run(
                    [cmd, "-t", table, "-D", *words[1:]], capture_output=True, check=False
                )
    for table, chain in new:
        subprocess.run([cmd, "-t", table, "-F", chain], capture_output=True, check=False)
    for table, chain in new:
        subprocess.run([cmd, "-t", table, "-X", chain], capture_output=True, check=False)


def _remove_cgroup_tree(root: Path) -> None:
    """rmdir a cgroup v1 subtree bottom-up (only empty cgroups can go)."""
    dirs = sorted(
        (p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True
    )
    for d in [*dirs, root]:
        with contextlib.suppress(OSError):
            d.rmdir()
