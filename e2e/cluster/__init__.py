"""The local Kubernetes test bed: a real control plane and two kinds of node.

``Cluster().up()`` starts etcd, kube-apiserver, kube-controller-manager, kube-scheduler
(binaries built by ``build-binaries.sh``), the process node agent (``e2e.node.agent``,
node ``glowplug-testbed``, label ``glowplug.dev/node=process``) and, unless
``GLOWPLUG_REAL_NODE=0``, a real node (``e2e.cluster.realnode``: containerd, kubelet,
kube-proxy; node ``glowplug-realnode``, tainted so only pods that ask for it land there).
It waits until the API server is ready and both nodes are Ready, and writes a kubeconfig
into the state directory (``$GLOWPLUG_STATE``, default ``~/.cache/glowplug/cluster``).
``down()`` stops exactly the processes ``up()`` recorded (pid + start time), the nodes
first so pods stop gracefully, sweeps any network namespace the agent recorded and puts
back what the real node changed on the host.

``up()`` is idempotent: when a healthy cluster from an earlier ``up()`` is running it is
reused. Command line: ``python -m e2e.cluster up|down|status``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e2e.cluster import audit
from e2e.cluster.pki import Pki, ensure_pki
from e2e.cluster.procs import Proc, launch
from e2e.cluster.realnode import COMPONENTS as REAL_NODE_COMPONENTS
from e2e.cluster.realnode import RealNode, RealNodeConfig

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / "e2e" / "cluster" / "build-binaries.sh"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "node-agent")

Log = Callable[[str], None]


def _default_log(msg: str) -> None:
    print(f"[cluster] {msg}", file=sys.stderr, flush=True)


def default_state_dir() -> Path:
    env = os.environ.get("GLOWPLUG_STATE")
    if env:
        return Path(env)
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return cache / "glowplug" / "cluster"


def ensure_binaries(log: Log = _default_log) -> Path:
    """Build or reuse the binaries (the script prints progress); return the bin directory."""
    cached = cached_bin_dir()
    if cached is not None:
        return cached
    if shutil.which("go") is None:
        raise FileNotFoundError("the Go toolchain (go) is not installed: cannot build the test bed")
    log(f"binaries: running {BUILD_SCRIPT.relative_to(REPO)}")
    out = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True, check=True, cwd=REPO
    )
    return Path(out.stdout.strip().splitlines()[-1])


BINARIES = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "helm",
    "kubelet",
    "kube-proxy",
)


def cached_bin_dir() -> Path | None:
    """The bin directory when every binary is already cached (no Go needed), else None.

    Mirrors build-binaries.sh: ``$GLOWPLUG_CACHE/bin/k8s-<version>-etcd-<version>``, the
    versions read from the wrapper modules; ``$GLOWPLUG_BIN_DIR`` overrides it.
    """
    env = os.environ.get("GLOWPLUG_BIN_DIR")
    if env:
        return Path(env)

    def required(gomod: Path, module: str) -> str:
        for line in gomod.read_text().splitlines():
            if line.startswith(f"require {module} "):
                return line.split()[2]
        raise ValueError(f"{module} not required in {gomod}")

    here = REPO / "e2e" / "cluster"
    k8s = required(here / "k8s" / "go.mod", "k8s.io/kubernetes")
    etcd = required(here / "etcd" / "go.mod", "go.etcd.io/etcd/server/v3")
    cache = os.environ.get("GLOWPLUG_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glowplug"
    )
    bin_dir = Path(cache) / "bin" / f"k8s-{k8s}-etcd-{etcd}"
    return bin_dir if all((bin_dir / b).exists() for b in BINARIES) else None


def _first_host(cidr: str) -> str:
    import ipaddress

    return str(next(ipaddress.ip_network(cidr).hosts()))


@dataclass
class Config:
    """Addresses and ports of the test bed. Defaults suit one cluster per machine."""

    state_dir: Path = field(default_factory=default_state_dir)
    etcd_port: int = int(os.environ.get("GLOWPLUG_ETCD_PORT", "23790"))
    # etcd also listens for peers; by default on the next port, so two clusters side by
    # side need etcd ports at least two apart unless this is set.
    etcd_peer_port: int = int(os.environ.get("GLOWPLUG_ETCD_PEER_PORT", "0"))
    apiserver_port: int = int(os.environ.get("GLOWPLUG_APISERVER_PORT", "6443"))
    # The host end of every pod's veth carries this address; pods reach the API server here.
    pod_cidr: str = os.environ.get("GLOWPLUG_POD_CIDR", "10.244.0.0/16")
    host_ip: str = _first_host(os.environ.get("GLOWPLUG_POD_CIDR", "10.244.0.0/16"))
    service_cidr: str = "10.96.0.0/16"
    controller_manager_port: int = int(os.environ.get("GLOWPLUG_CONTROLLER_MANAGER_PORT", "10257"))
    scheduler_port: int = int(os.environ.get("GLOWPLUG_SCHEDULER_PORT", "10259"))
    # The agent's log endpoint (what the kubelet serves on 10250), for `kubectl logs`.
    kubelet_port: int = int(os.environ.get("GLOWPLUG_KUBELET_PORT", "10250"))
    node_name: str = os.environ.get("GLOWPLUG_NODE_NAME", "glowplug-testbed")
    # Base of the crash-loop back-off (the kubelet uses 10 s, doubling up to 5 min).
    backoff_base: float = float(os.environ.get("GLOWPLUG_AGENT_BACKOFF_BASE", "10"))
    real_node: RealNodeConfig = field(default_factory=RealNodeConfig)

    def __post_init__(self) -> None:
        if not self.etcd_peer_port:
            self.etcd_peer_port = self.etcd_port + 1


class Cluster:
    """Handle on the test bed: start/stop it, and talk to it (``kubectl``, ``api``)."""

    def __init__(
        self, config: Config | None = None, bin_dir: Path | None = None, log: Log = _default_log
    ) -> None:
        self.config = config or Config()
        self.state_dir = self.config.state_dir
        self._bin_dir = bin_dir
        self.log = log

    # -- paths and facts -------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.config.apiserver_port}"

    @property
    def pod_server(self) -> str:
        """The API server as pods see it (the host end of their veth)."""
        return f"https://{self.config.host_ip}:{self.config.apiserver_port}"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            state = self._read_state()
            if state and state.get("bin_dir"):
                self._bin_dir = Path(state["bin_dir"])
            else:
                self._bin_dir = ensure_binaries(self.log)
        return self._bin_dir

    @property
    def audit_log(self) -> Path:
        """The API server's audit log (e2e/cluster/audit.py says what it records)."""
        return self.state_dir / "logs" / "audit.log"

    @property
    def pki(self) -> Pki:
        return Pki(self.state_dir / "pki")

    @property
    def agent_dir(self) -> Path:
        return self.state_dir / "agent"

    @property
    def real_node(self) -> RealNode:
        """The real node (containerd, kubelet, kube-proxy) of this test bed."""
        # Never build binaries just to stop a node: the recorded or cached ones do.
        state = self._read_state() or {}
        bin_dir = self._bin_dir or (Path(state["bin_dir"]) if state.get("bin_dir") else None)
        return RealNode(
            self.state_dir,
            self.config.real_node,
            bin_dir=bin_dir or cached_bin_dir() or self.bin_dir,
            pki=self.pki,
            server=self.server,
            apiserver_port=self.config.apiserver_port,
            api=self.api,
            log=self.log,
        )

    def has_real_node(self) -> bool:
        """True when the running test bed has a real node (it was started with one)."""
        state = self._read_state() or {}
        return bool(state.get("real_node"))

    @property
    def token(self) -> str:
        return self._tokens()["admin"]

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run the test bed's kubectl against this cluster; output captured as text."""
        proc = subprocess.run(
            [str(self.bin_dir / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
            capture_output=True,
            text=True,
            input=input,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise subprocess.CalledProcessError(
                proc.returncode, proc.args, output=proc.stdout, stderr=proc.stderr
            )
        return proc

    def pod_logs(self, namespace: str, pod: str, container: str | None = None) -> str:
        """A pod's container output (``kubectl logs`` needs a kubelet API the agent lacks)."""
        dirs = sorted(
            (self.agent_dir / "pods").glob(f"{namespace}_{pod}_*"), key=lambda d: d.stat().st_mtime
        )
        if not dirs:
            return ""
        files = [dirs[-1] / f"{container}.log"] if container else sorted(dirs[-1].glob("*.log"))
        return "".join(f.read_text(errors="replace") for f in files if f.exists())

    def api(
        self, method: str, path: str, body: Any = None, content_type: str = "application/json"
    ) -> Any:
        """One synchronous API request as the admin; returns the decoded JSON body."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        with urllib.request.urlopen(req, context=self._ssl(), timeout=30) as resp:
            return json.loads(resp.read() or b"null")

    # -- lifecycle ---------------------------------------------------------------------------

    def running(self) -> bool:
        """True when every recorded component is alive and the API server is ready."""
        state = self._read_state()
        if not state:
            return False
        procs = [Proc.from_json(p) for p in state.get("procs", [])]
        names = {p.name for p in procs}
        wanted = set(COMPONENTS) | (set(REAL_NODE_COMPONENTS) if state.get("real_node") else set())
        if wanted - names or not all(p.alive() for p in procs):
            return False
        return self._readyz()

    def up(self, started_by: str = "cli") -> bool:
        """Start the cluster, or reuse a healthy running one. Returns True if it started one."""
        with self._lock():
            if self.running():
                state = self._read_state() or {}
                if state.get("code") == code_version():
                    self.log(f"already running (state in {self.state_dir}); reusing it")
                    return False
                users = self._live_users()
                if users or state.get("started_by") != "pytest":
                    # Someone is using it (a test session, or whoever ran cluster-up by
                    # hand): never restart it under them.
                    self.log(
                        "WARNING: the running test bed predates changes to e2e/cluster or "
                        "e2e/node; reusing it (make cluster-down && make cluster-up picks "
                        "them up)"
                    )
                    return False
                self.log("the test-bed code changed since this cluster started; restarting it")
                self._down_locked()
            if self._read_state():
                self.log("found a partial cluster from an earlier run; stopping it first")
                self._down_locked()
            t0 = time.monotonic()
            self._start(started_by)
            self.log(f"cluster up in {time.monotonic() - t0:.1f} s")
            return True

    def down(self) -> None:
        with self._lock():
            self._down_locked()

    def stop_real_node(self) -> float:
        """Stop only the real node (its pods, processes, host changes); returns seconds."""
        with self._lock():
            state = self._read_state() or {}
            procs = {p.name: p for p in (Proc.from_json(x) for x in state.get("procs", []))}
            t0 = time.monotonic()
            if procs.get("kubelet") and procs["kubelet"].alive():
                self.real_node.drain()
            self.real_node.stop(procs)
            state["procs"] = [
                p.to_json() for p in procs.values() if p.name not in REAL_NODE_COMPONENTS
            ]
            state["real_node"] = False
            self._write_state(state)
            return time.monotonic() - t0

    def start_real_node(self) -> float:
        """Start the real node beside a running control plane; returns seconds to Ready."""
        with self._lock():
            state = self._read_state() or {}
            procs = [Proc.from_json(x) for x in state.get("procs", [])]
            node = self.real_node
            node.prepare()
            t0 = time.monotonic()

            def record(p: Proc) -> None:
                procs.append(p)
                state["procs"] = [x.to_json() for x in procs]
                self._write_state(state)

            def alive() -> None:
                for p in procs:
                    if not p.alive():
                        raise RuntimeError(f"{p.name} exited; see {self.state_dir / 'logs'}")

            node.start(record, alive)
            state["real_node"] = True
            self._write_state(state)
            return time.monotonic() - t0

    # -- users (pytest sessions sharing one cluster) ----------------------------------------

    def attach(self) -> None:
        """Record this process as a user, so another session's teardown leaves it running."""
        users = self.state_dir / "users"
        users.mkdir(parents=True, exist_ok=True)
        me = Proc("user", os.getpid(), _my_start())
        (users / f"{me.pid}.json").write_text(json.dumps(me.to_json()))

    def detach(self) -> list[Proc]:
        """Forget this process as a user; return the other users still alive."""
        (self.state_dir / "users" / f"{os.getpid()}.json").unlink(missing_ok=True)
        return self._live_users()

    def release(self) -> None:
        """End of a test session: detach, and stop the cluster if a test session started
        it and no other session still uses it (checked and done under the lock)."""
        with self._lock():
            others = self.detach()
            if self.started_by() != "pytest":
                return
            if others:
                self.log(f"leaving the cluster up for {len(others)} other session(s)")
                return
            self._down_locked()

    def users(self) -> list[Proc]:
        """Test sessions currently attached to the cluster (other than this process)."""
        return self._live_users()

    def _live_users(self) -> list[Proc]:
        """Other processes (pytest sessions) that attached and are still alive."""
        users = self.state_dir / "users"
        alive = []
        for f in users.glob("*.json") if users.exists() else []:
            try:
                p = Proc.from_json(json.loads(f.read_text()))
            except (OSError, ValueError, KeyError):
                continue  # being written right now, or gone
            if p.pid == os.getpid():
                continue
            if p.alive():
                alive.append(p)
            else:
                f.unlink(missing_ok=True)
        return alive

    def started_by(self) -> str | None:
        state = self._read_state()
        return str(state.get("started_by")) if state else None

    # -- internals ----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.state_dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _state_path(self) -> Path:
        return self.state_dir / "state.json"

    def _read_state(self) -> dict[str, Any] | None:
        try:
            return dict(json.loads(self._state_path().read_text()))
        except (OSError, ValueError):
            return None

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(self._state_path())

    def _tokens(self) -> dict[str, str]:
        path = self.state_dir / "tokens.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tokens = {u: secrets.token_hex(24) for u in ("admin", "controller-manager", "scheduler")}
        path.write_text(json.dumps(tokens))
        path.chmod(0o600)
        return tokens

    def _ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki.ca_crt))

    def _readyz(self) -> bool:
        try:
            req = urllib.request.Request(self.server + "/readyz")
            req.add_header("Authorization", f"Bearer {self.token}")
            with urllib.request.urlopen(req, context=self._ssl(), timeout=2) as resp:
                return bool(resp.status == 200)
        except (OSError, urllib.error.URLError, ssl.SSLError):
            return False

    def _write_kubeconfig(self, path: Path, server: str, user: str, token: str) -> None:
        # JSON is valid YAML, and kubectl, client-go and kubernetes_asyncio all read it.
        kc = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "glowplug-testbed",
                    "cluster": {"server": server, "certificate-authority": str(self.pki.ca_crt)},
                }
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "glowplug-testbed",
                    "context": {"cluster": "glowplug-testbed", "user": user},
                }
            ],
            "current-context": "glowplug-testbed",
        }
        path.write_text(json.dumps(kc, indent=2))
        path.chmod(0o600)

    def _start(self, started_by: str) -> None:
        cfg = self.config
        bin_dir = self.bin_dir
        for name in COMPONENTS[:-1]:
            if not (bin_dir / name).exists():
                raise FileNotFoundError(f"{bin_dir / name} is missing: run `make binaries`")
        real_node = self.real_node if cfg.real_node.enabled else None
        if real_node is not None and (other := real_node.other_owner()):
            # kube-proxy's chains are machine-wide: one real node per machine.
            self.log(
                f"WARNING: the real node of the test bed in {other} runs on this machine; "
                "this one starts with the process node only (GLOWPLUG_REAL_NODE=0 says so)"
            )
            real_node = None
        if real_node is not None:
            real_node.prepare()  # images: minutes on a fresh machine, cached afterwards
        # Each cluster gets fresh logs; the previous cluster's stay in logs.prev.
        logs = self.state_dir / "logs"
        if logs.exists():
            shutil.rmtree(self.state_dir / "logs.prev", ignore_errors=True)
            logs.rename(self.state_dir / "logs.prev")
        logs.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        pki = ensure_pki(
            self.state_dir / "pki",
            ip_sans=["127.0.0.1", cfg.host_ip, _first_host(cfg.service_cidr)],
            dns_sans=[
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )
        tokens = self._tokens()
        (self.state_dir / "tokens.csv").write_text(
            f'{tokens["admin"]},admin,admin,"system:masters"\n'
            f"{tokens['controller-manager']},system:kube-controller-manager,"
            "system:kube-controller-manager\n"
            f"{tokens['scheduler']},system:kube-scheduler,system:kube-scheduler\n"
        )
        (self.state_dir / "tokens.csv").chmod(0o600)
        self._write_kubeconfig(self.kubeconfig, self.server, "admin", tokens["admin"])
        self._write_kubeconfig(
            self.state_dir / "controller-manager.kubeconfig",
            self.server,
            "system:kube-controller-manager",
            tokens["controller-manager"],
        )
        self._write_kubeconfig(
            self.state_dir / "scheduler.kubeconfig",
            self.server,
            "system:kube-scheduler",
            tokens["scheduler"],
        )
        self.log(f"pki and kubeconfigs ready ({time.monotonic() - t0:.1f} s)")

        # A fresh etcd every time: each `up` is a clean cluster (pod logs of the last one go).
        etcd_dir = self.state_dir / "etcd"
        shutil.rmtree(etcd_dir, ignore_errors=True)
        shutil.rmtree(self.agent_dir / "pods", ignore_errors=True)
        procs: list[Proc] = []
        state: dict[str, Any] = {
            "started_by": started_by,
            "bin_dir": str(bin_dir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "procs": [],
            "code": code_version(),
            "real_node": real_node is not None,
        }

        def record(p: Proc) -> None:
            procs.append(p)
            state["procs"] = [x.to_json() for x in procs]
            self._write_state(state)

        try:
            etcd_url = f"http://127.0.0.1:{cfg.etcd_port}"
            record(
                launch(
                    "etcd",
                    [
                        str(bin_dir / "etcd"),
                        "--name=glowplug-testbed",
                        f"--data-dir={etcd_dir}",
                        f"--listen-client-urls={etcd_url}",
                        f"--advertise-client-urls={etcd_url}",
                        f"--listen-peer-urls=http://127.0.0.1:{cfg.etcd_peer_port}",
                        f"--initial-advertise-peer-urls=http://127.0.0.1:{cfg.etcd_peer_port}",
                        f"--initial-cluster=glowplug-testbed=http://127.0.0.1:{cfg.etcd_peer_port}",
                        "--unsafe-no-fsync",
                        "--log-level=warn",
                    ],
                    logs / "etcd.log",
                )
            )
            self.log(f"etcd started (pid {procs[-1].pid}) on {etcd_url}")
            issuer = "https://kubernetes.default.svc.cluster.local"
            audit_policy = audit.write_policy(self.state_dir / "audit-policy.yaml")
            record(
                launch(
                    "kube-apiserver",
                    [
                        str(bin_dir / "kube-apiserver"),
                        f"--etcd-servers={etcd_url}",
                        # All addresses: loopback for the host, the veth address for pods.
                        "--bind-address=0.0.0.0",
                        f"--advertise-address={cfg.host_ip}",
                        f"--secure-port={cfg.apiserver_port}",
                        f"--cert-dir={self.state_dir / 'pki'}",
                        f"--tls-cert-file={pki.apiserver_crt}",
                        f"--tls-private-key-file={pki.apiserver_key}",
                        f"--client-ca-file={pki.ca_crt}",
                        f"--token-auth-file={self.state_dir / 'tokens.csv'}",
                        "--authorization-mode=Node,RBAC",
                        f"--service-account-issuer={issuer}",
                        f"--service-account-key-file={pki.sa_pub}",
                        f"--service-account-signing-key-file={pki.sa_key}",
                        f"--service-cluster-ip-range={cfg.service_cidr}",
                        # The advertise address is not a real node of a real network.
                        "--endpoint-reconciler-type=none",
                        # kubectl logs: the API server calls the agent's log endpoint.
                        f"--kubelet-client-certificate={pki.kubelet_client_crt}",
                        f"--kubelet-client-key={pki.kubelet_client_key}",
                        "--kubelet-preferred-address-types=InternalIP",
                        "--allow-privileged=true",
                        "--profiling=false",
                        # Who asked for what (e2e/cluster/audit.py): the scale tests count
                        # glowplug's own requests by user agent, verb and resource.
                        f"--audit-policy-file={audit_policy}",
                        f"--audit-log-path={self.audit_log}",
                        "--audit-log-format=json",
                        "--audit-log-maxsize=200",
                        "--audit-log-maxbackup=1",
                        "--v=1",
                    ],
                    logs / "kube-apiserver.log",
                )
            )
            self.log(f"kube-apiserver started (pid {procs[-1].pid}); waiting for /readyz")
            self._wait(self._readyz, 90, "kube-apiserver /readyz", procs)
            self.log(f"kube-apiserver ready ({time.monotonic() - t0:.1f} s)")
            record(
                launch(
                    "kube-controller-manager",
                    [
                        str(bin_dir / "kube-controller-manager"),
                        f"--kubeconfig={self.state_dir / 'controller-manager.kubeconfig'}",
                        "--leader-elect=false",
                        "--use-service-account-credentials=true",
                        f"--service-account-private-key-file={pki.sa_key}",
                        f"--root-ca-file={pki.ca_crt}",
                        f"--cluster-cidr={cfg.pod_cidr}",
                        f"--service-cluster-ip-range={cfg.service_cidr}",
                        "--controllers=*",
                        "--bind-address=127.0.0.1",
                        f"--secure-port={cfg.controller_manager_port}",
                        "--profiling=false",
                        "--v=1",
                    ],
                    logs / "kube-controller-manager.log",
                )
            )
            record(
                launch(
                    "kube-scheduler",
                    [
                        str(bin_dir / "kube-scheduler"),
                        f"--kubeconfig={self.state_dir / 'scheduler.kubeconfig'}",
                        "--leader-elect=false",
                        "--bind-address=127.0.0.1",
                        f"--secure-port={cfg.scheduler_port}",
                        "--profiling=false",
                        "--v=1",
                    ],
                    logs / "kube-scheduler.log",
                )
            )
            self.agent_dir.mkdir(parents=True, exist_ok=True)
            env = dict(os.environ)
            env["PYTHONPATH"] = str(REPO)
            record(
                launch(
                    "node-agent",
                    [
                        sys.executable,
                        "-m",
                        "e2e.node.agent",
                        f"--kubeconfig={self.kubeconfig}",
                        f"--state-dir={self.agent_dir}",
                        f"--node-name={cfg.node_name}",
                        f"--host-ip={cfg.host_ip}",
                        f"--pod-cidr={cfg.pod_cidr}",
                        f"--api-port={cfg.apiserver_port}",
                        f"--backoff-base={cfg.backoff_base}",
                        f"--kubelet-port={cfg.kubelet_port}",
                        f"--serving-cert={pki.apiserver_crt}",
                        f"--serving-key={pki.apiserver_key}",
                        f"--client-ca={pki.ca_crt}",
                        "--node-label=glowplug.dev/node=process",
                    ],
                    logs / "node-agent.log",
                    env=env,
                    cwd=REPO,
                )
            )
            self.log("controller-manager, scheduler and node agent started; waiting for the node")
            self._wait(self._node_ready, 60, f"node {cfg.node_name} Ready", procs)
            self._wait(self._default_sa, 60, "ServiceAccount default/default", procs)
            if real_node is not None:

                def alive() -> None:
                    for p in procs:
                        if not p.alive():
                            log = logs / f"{p.name}.log"
                            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                            raise RuntimeError(f"{p.name} exited:\n{tail}")

                real_node.start(record, alive)
        except BaseException:
            self.log("start failed; stopping what was started")
            self._down_locked()
            raise
        self.log(f"logs in {logs}")
        print(f"export KUBECONFIG={self.kubeconfig}", flush=True)

    def _wait(self, cond: Callable[[], bool], timeout: float, what: str, procs: list[Proc]) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if cond():
                return
            for p in procs:
                if not p.alive():
                    log = self.state_dir / "logs" / f"{p.name}.log"
                    tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
                    raise RuntimeError(f"{p.name} exited while waiting for {what}:\n{tail}")
            time.sleep(0.2)
        raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")

    def _node_ready(self) -> bool:
        try:
            node = self.api("GET", f"/api/v1/nodes/{self.config.node_name}")
        except (urllib.error.URLError, OSError):
            return False
        conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
        taints = node.get("spec", {}).get("taints") or []
        return conds.get("Ready") == "True" and not taints

    def _default_sa(self) -> bool:
        try:
            self.api("GET", "/api/v1/namespaces/default/serviceaccounts/default")
            self.api("GET", "/api/v1/namespaces/default/configmaps/kube-root-ca.crt")
            return True
        except (urllib.error.URLError, OSError):
            return False

    def _down_locked(self) -> None:
        state = self._read_state()
        if not state:
            self.log("not running (no state)")
            self._sweep_netns()
            if self.real_node.snapshot_path.exists():
                self.real_node.stop({})
            return
        procs = {p.name: p for p in (Proc.from_json(x) for x in state.get("procs", []))}
        real_node = self.real_node
        if "kubelet" in procs or real_node.snapshot_path.exists():
            # The real node first: its pods go through the API while it still runs; then
            # its processes stop and the host is put back.
            t0 = time.monotonic()
            if procs.get("kubelet") and procs["kubelet"].alive():
                real_node.drain()
            real_node.stop(procs)
            self.log(f"real node down ({time.monotonic() - t0:.1f} s)")
        # The agent first, with time to stop its pods gracefully; then the control plane in
        # reverse start order.
        order = [
            "node-agent",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
        ]
        for name in order:
            p = procs.get(name)
            if p is None:
                continue
            timeout = 45.0 if name == "node-agent" else 10.0
            if p.stop(timeout=timeout):
                self.log(f"stopped {name} (pid {p.pid})")
        self._sweep_netns()
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        self._state_path().unlink(missing_ok=True)
        self.log("cluster down")

    def _sweep_netns(self) -> None:
        """Remove what a killed agent could not: processes in its netns, the netns, veths."""
        from e2e.node.netns import sweep_recorded

        for line in sweep_recorded(self.agent_dir):
            self.log(line)
        # A killed agent could not put net.ipv4.ip_forward back either.
        saved = self.agent_dir / "ip_forward.before"
        if saved.exists():
            Path("/proc/sys/net/ipv4/ip_forward").write_text(saved.read_text().strip() + "\n")
            saved.unlink()
            self.log("restored net.ipv4.ip_forward")


def code_version() -> str:
    """A digest of the test bed's own code: a running cluster made by older code is stale."""
    import hashlib

    h = hashlib.sha256()
    for d in ("cluster", "node"):
        for f in sorted((REPO / "e2e" / d).glob("*.*")):
            if f.suffix in (".py", ".yaml", ".sh"):
                h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def _my_start() -> int:
    from e2e.cluster.procs import start_time

    st = start_time(os.getpid())
    assert st is not None
    return st
