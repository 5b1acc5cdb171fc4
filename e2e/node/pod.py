"""One pod on the test bed's node: its network, volumes, containers, probes and status.

Containers are local processes (see images.yaml) started inside the pod's network
namespace and a private mount namespace that binds the pod's volumes (above all the
projected ServiceAccount token at /var/run/secrets/kubernetes.io/serviceaccount) at their
mount paths. Probes, restarts with back-off, graceful deletion and the pod's status
follow the kubelet's rules, with one deliberate difference: until a startup or readiness
probe first succeeds it is retried every ``FAST_PROBE_S`` (failures still count once per
``periodSeconds``), so a pod is Ready within a fraction of a second of its server
listening rather than up to one period later.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import re
import shlex
import signal
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from e2e.node import netns
from e2e.node.api import ApiError
from e2e.node.images import REPO, ImageNotMapped

if TYPE_CHECKING:
    from e2e.node.agent import Agent

log = logging.getLogger("node-agent")

FAST_PROBE_S = 0.1
SA_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
MAX_BACKOFF_FACTOR = 30  # 10 s base -> 300 s cap, as the kubelet
BACKOFF_RESET_S = 600.0


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ConfigError(Exception):
    """A container cannot be configured (missing Secret/ConfigMap): CreateContainerConfigError."""


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    """Kubernetes ``$(VAR)`` expansion; ``$$(VAR)`` escapes, unknown names stay as written."""
    out = []
    i = 0
    while i < len(value):
        if value.startswith("$$(", i):
            out.append("$(")
            i += 3
            continue
        m = _VAR.match(value, i)
        if m:
            out.append(env.get(m.group(1), m.group(0)))
            i = m.end()
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


@dataclass
class Probe:
    spec: dict[str, Any]

    @property
    def period(self) -> float:
        return float(self.spec.get("periodSeconds") or 10)

    @property
    def timeout(self) -> float:
        return float(self.spec.get("timeoutSeconds") or 1)

    @property
    def failure_threshold(self) -> int:
        return int(self.spec.get("failureThreshold") or 3)

    @property
    def success_threshold(self) -> int:
        return int(self.spec.get("successThreshold") or 1)

    @property
    def initial_delay(self) -> float:
        return float(self.spec.get("initialDelaySeconds") or 0)


@dataclass
class Container:
    spec: dict[str, Any]
    init: bool = False
    state: dict[str, Any] = field(
        default_factory=lambda: {"waiting": {"reason": "ContainerCreating"}}
    )
    last_state: dict[str, Any] = field(default_factory=dict)
    restart_count: int = 0
    ready: bool = False
    started: bool = False
    proc: asyncio.subprocess.Process | None = None
    started_at: float = 0.0
    killed_for: str | None = None

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "name": self.name,
            "image": self.spec.get("image", ""),
            "imageID": "",
            "ready": self.ready,
            "restartCount": self.restart_count,
            "started": self.started,
            "state": self.state,
            "lastState": self.last_state,
        }
        if self.proc is not None:
            s["containerID"] = f"glowplug-testbed://{self.proc.pid}"
        return s


class PodRunner:
    """Runs one pod until it is deleted (or the agent stops)."""

    def __init__(self, agent: Agent, pod: dict[str, Any]) -> None:
        self.agent = agent
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.name: str = meta["name"]
        self.namespace: str = meta["namespace"]
        self.spec: dict[str, Any] = pod["spec"]
        self.restart_policy: str = self.spec.get("restartPolicy", "Always")
        self.init_containers = [
            Container(c, init=True) for c in self.spec.get("initContainers", [])
        ]
        self.containers = [Container(c) for c in self.spec.get("containers", [])]
        self.net: netns.PodNet | None = None
        self.pod_ip: str | None = None
        self.initialized = not self.init_containers
        self.phase = "Pending"
        self.start_time = now_rfc3339()
        self.terminating = False
        self.dirty = asyncio.Event()
        self.stopped = asyncio.Event()  # every process of the pod has exited
        self.tasks: list[asyncio.Task[Any]] = []
        self.dir = agent.state_dir / "pods" / f"{self.namespace}_{self.name}_{self.uid[:8]}"
        self.transitions: dict[str, str] = {}
        self._last_status: dict[str, Any] | None = None
        self._main: asyncio.Task[None] | None = None
        self._termination: asyncio.Task[None] | None = None
        self._token_paths: list[tuple[Path, dict[str, Any]]] = []
        self._event_times: dict[tuple[str, str], float] = {}

    @property
    def ident(self) -> str:
        return f"{self.namespace}/{self.name}"

    def event(self, etype: str, reason: str, message: str, c: Container | None = None) -> None:
        # At most one event per (container, reason) every 10 s, as the kubelet's
        # aggregation would show it; probes retried every 0.1 s must not flood the API.
        key = (c.name if c else "", reason)
        now = time.monotonic()
        if now - self._event_times.get(key, -1e9) < 10.0:
            return
        self._event_times[key] = now
        self.agent.event(self.pod, etype, reason, message, c.name if c else "")

    def container_running(self, name: str) -> bool:
        return any(c.name == name and _alive(c) for c in self.init_containers + self.containers)

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.tasks.append(asyncio.create_task(self._status_writer()))
        self._main = asyncio.create_task(self._run())
        self.tasks.append(self._main)

    def update(self, pod: dict[str, Any]) -> None:
        self.pod = pod
        if pod["metadata"].get("deletionTimestamp") and self._termination is None:
            grace = pod["metadata"].get("deletionGracePeriodSeconds")
            if grace is None:
                grace = self.spec.get("terminationGracePeriodSeconds", 30)
            self._termination = asyncio.create_task(self.terminate(float(grace), delete=True))

    async def _run(self) -> None:
        try:
            await self._setup()
        except Exception as e:
            log.exception("%s: setup failed", self.ident)
            for c in self.containers:
                c.state = {"waiting": {"reason": "CreateContainerError", "message": str(e)}}
            self.mark()
            return
        self.mark()
        for c in self.init_containers:
            ok = await self._supervise(c)
            if not ok:
                if not self.terminating:
                    self.phase = "Failed"  # an init container failed under restartPolicy Never
                    self.mark()
                return
        self.initialized = True
        self.mark()
        await asyncio.gather(*(self._supervise(c) for c in self.containers))
        if not self.terminating:
            # Every container ended for good (restartPolicy Never/OnFailure): a terminal pod.
            failed = any(
                c.state.get("terminated", {}).get("exitCode", 0) != 0 for c in self.containers
            )
            self.phase = "Failed" if failed else "Succeeded"
            self.mark()
            await self._release_network()

    async def _setup(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pod_ip = self.agent.pool.allocate()
        self.net = await asyncio.to_thread(
            netns.create,
            self.agent.state_dir / "netns",
            self.uid,
            self.pod_ip,
            self.agent.host_ip,
        )
        log.info("%s: netns %s, ip %s", self.ident, self.net.netns, self.pod_ip)
        self.mark()
        while True:
            try:
                await self._prepare_volumes()
                break
            except ConfigError as e:
                # As the kubelet: the pod stays ContainerCreating and the mount is retried.
                self._token_paths.clear()
                for c in self.init_containers + self.containers:
                    c.state = {"waiting": {"reason": "ContainerCreating", "message": str(e)}}
                self.event("Warning", "FailedMount", f"MountVolume.SetUp failed: {e}")
                self.mark()
                await asyncio.sleep(2.0)
        if self._token_paths:
            self.tasks.append(asyncio.create_task(self._refresh_tokens()))

    async def _release_network(self) -> None:
        if self.net is not None:
            await asyncio.to_thread(netns.release, self.agent.state_dir / "netns", self.net)
            self.net = None
        if self.pod_ip:
            self.agent.pool.release(self.pod_ip)

    async def terminate(self, grace: float, delete: bool) -> None:
        """preStop, SIGTERM, wait out the grace period, SIGKILL; then delete the pod object."""
        self.terminating = True
        log.info("%s: terminating (grace %.0f s)", self.ident, grace)
        for c in self.containers:
            if _alive(c):
                self.event("Normal", "Killing", f"Stopping container {c.name}", c)
        deadline = time.monotonic() + grace
        running = [c for c in self.init_containers + self.containers if _alive(c)]
        hooks = [
            self._pre_stop(c) for c in running if (c.spec.get("lifecycle") or {}).get("preStop")
        ]
        if hooks:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    asyncio.gather(*hooks, return_exceptions=True), timeout=max(grace, 0.0)
                )
        for c in running:
            _signal(c, signal.SIGTERM)
        # The kubelet grants 2 s more when the hook used up the grace period.
        remaining = max(deadline - time.monotonic(), 2.0 if hooks else 0.0)
        await _wait_exit(running, remaining)
        for c in running:
            if _alive(c):
                log.info("%s: %s did not exit in the grace period; SIGKILL", self.ident, c.name)
                _signal(c, signal.SIGKILL)
        await _wait_exit(running, 5.0)
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        await self._release_network()
        self.stopped.set()
        if delete:
            with contextlib.suppress(ApiError, aiohttp.ClientError, TimeoutError):
                await self.agent.api.request(
                    "DELETE",
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.name}",
                    {
                        "kind": "DeleteOptions",
                        "apiVersion": "v1",
                        "gracePeriodSeconds": 0,
                        "preconditions": {"uid": self.uid},
                    },
                )
            log.info("%s: deleted", self.ident)
        for t in self.tasks:
            t.cancel()
        self.agent.forget(self.uid)

    async def kill_now(self) -> None:
        """The pod object is gone, or the agent is stopping: stop fast, leave nothing."""
        if self._termination is not None and not self._termination.done():
            self._termination.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._termination
        self.terminating = True
        running = [c for c in self.init_containers + self.containers if _alive(c)]
        for c in running:
            _signal(c, signal.SIGTERM)
        await _wait_exit(running, 3.0)
        for c in running:
            if _alive(c):
                _signal(c, signal.SIGKILL)
        await _wait_exit(running, 3.0)
        if self._main is not None:
            self._main.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._main
        await self._release_network()
        for t in self.tasks:
            t.cancel()
        self.agent.forget(self.uid)

    async def _pre_stop(self, c: Container) -> None:
        hook = c.spec["lifecycle"]["preStop"]
        try:
            if "sleep" in hook:
                await asyncio.sleep(float(hook["sleep"].get("seconds", 0)))
            elif "exec" in hook:
                cmd = list(hook["exec"].get("command", []))
                secs = _sleep_seconds(cmd)
                if secs is not None:
                    # `sleep N` in an image means "keep serving N s"; no need for a process.
                    await asyncio.sleep(secs)
                else:
                    await self._exec_in_pod(cmd, None)
            elif "httpGet" in hook:
                await self._http_get(c, hook["httpGet"], 30.0)
            log.info("%s: preStop of %s done", self.ident, c.name)
        except Exception as e:
            log.warning("%s: preStop of %s failed: %s", self.ident, c.name, e)

    # -- containers ----------------------------------------------------------------------------

    async def _supervise(self, c: Container) -> bool:
        """Run a container, restarting it per restartPolicy. True if it completed successfully
        (init containers) or ran until termination."""
        backoff_n = 0
        while not self.terminating:
            try:
                launch = self.agent.images.resolve(
                    c.spec.get("image", ""),
                    list(c.spec.get("command", [])),
                    list(c.spec.get("args", [])),
                )
                argv = launch.argv
            except ImageNotMapped as e:
                c.state = {"waiting": {"reason": "ErrImagePull", "message": str(e)}}
                self.event("Warning", "Failed", f"Failed to pull image: {e}", c)
                self.mark()
                await asyncio.sleep(1.0)
                c.state = {"waiting": {"reason": "ImagePullBackOff", "message": str(e)}}
                self.event(
                    "Normal", "BackOff", f'Back-off pulling image "{c.spec.get("image")}"', c
                )
                self.mark()
                await asyncio.Event().wait()  # never resolves; ends when the pod goes
                return False
            try:
                env = await self._env(c, launch.env)
            except ConfigError as e:
                c.state = {"waiting": {"reason": "CreateContainerConfigError", "message": str(e)}}
                self.event("Warning", "Failed", f"Error: {e}", c)
                self.mark()
                await asyncio.sleep(2.0)
                continue
            argv = [expand(a, env) for a in argv]
            rc = await self._run_once(c, argv, env)
            if self.terminating:
                return False
            ran_for = time.monotonic() - c.started_at
            restart = self.restart_policy == "Always" and not c.init
            restart = restart or (self.restart_policy != "Never" and rc != 0)
            if not restart:
                return rc == 0
            if ran_for > BACKOFF_RESET_S:
                backoff_n = 0
            c.restart_count += 1
            c.last_state = c.state
            delay = 0.0 if backoff_n == 0 else self._backoff(backoff_n)
            backoff_n += 1
            if delay > 0:
                c.state = {
                    "waiting": {
                        "reason": "CrashLoopBackOff",
                        "message": f"back-off {delay:.0f}s restarting failed container={c.name} "
                        f"pod={self.name}_{self.namespace}({self.uid})",
                    }
                }
                self.event(
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {c.name} in pod "
                    f"{self.name}_{self.namespace}({self.uid})",
                    c,
                )
                self.mark()
                await asyncio.sleep(delay)
        return False

    def _backoff(self, n: int) -> float:
        base = self.agent.backoff_base
        return float(min(base * 2 ** (n - 1), base * MAX_BACKOFF_FACTOR))

    async def _run_once(self, c: Container, argv: list[str], env: dict[str, str]) -> int:
        assert self.net is not None
        mounts = self._mounts(c)
        script = "set -e\n"
        # Pods run host programs from the checkout (its .venv, the stand-in): a volume
        # mounted over one of its ancestors (a chart's emptyDir at /tmp, with the checkout
        # under /tmp) would hide them. Bind the checkout aside first, back on top after.
        keep = self._repo_keep_dir([dst for _, dst, _ in mounts])
        if keep is not None:
            script += f"mkdir -p {shlex.quote(str(keep))}"
            script += f" && mount --bind {shlex.quote(str(REPO))} {shlex.quote(str(keep))}\n"
        for src, dst, ro in mounts:
            mk = f"mkdir -p {shlex.quote(dst)}"
            if src.is_file():
                mk = f"mkdir -p {shlex.quote(os.path.dirname(dst))} && touch {shlex.quote(dst)}"
            script += f"{mk} && mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}\n"
            if ro:
                script += f"mount -o remount,bind,ro {shlex.quote(dst)}\n"
        if keep is not None:
            script += f"mkdir -p {shlex.quote(str(REPO))}"
            script += f" && mount --bind {shlex.quote(str(keep))} {shlex.quote(str(REPO))}\n"
        workdir = c.spec.get("workingDir")
        if workdir:
            script += f"mkdir -p {shlex.quote(workdir)} && cd {shlex.quote(workdir)}\n"
        script += 'exec "$@"\n'
        full = [
            "ip", "netns", "exec", self.net.netns,
            "unshare", "--mount", "--propagation", "private",
            "sh", "-c", script, c.name, *argv,
        ]  # fmt: skip
        logfile = self.dir / f"{c.name}.log"
        with open(logfile, "ab") as out:  # noqa: ASYNC230 (a local append-only log)
            out.write(f"--- {now_rfc3339()} start: {shlex.join(argv)}\n".encode())
            out.flush()
            c.proc = await asyncio.create_subprocess_exec(
                *full,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(self.dir),
                start_new_session=True,
            )
        c.started_at = time.monotonic()
        c.killed_for = None
        started_at = now_rfc3339()
        c.state = {"running": {"startedAt": started_at}}
        c.ready = False
        probes = [asyncio.create_task(self._probe_lifecycle(c))]
        log.info("%s: started %s (pid %d): %s", self.ident, c.name, c.proc.pid, shlex.join(argv))
        self.event("Normal", "Started", f"Started container {c.name} (local process)", c)
        self.mark()
        rc = await c.proc.wait()
        for t in probes:
            t.cancel()
        c.ready = False
        c.started = False
        reason = "Completed" if rc == 0 else "Error"
        term: dict[str, Any] = {
            "exitCode": rc if rc >= 0 else 128 - rc,
            "reason": reason,
            "startedAt": started_at,
            "finishedAt": now_rfc3339(),
            "containerID": f"glowplug-testbed://{c.proc.pid}",
        }
        if rc < 0:
            term["signal"] = -rc
        if c.killed_for:
            term["message"] = c.killed_for
        c.state = {"terminated": term}
        log.info("%s: %s exited with %d", self.ident, c.name, rc)
        self.mark()
        return rc if rc >= 0 else 128 - rc

    # -- probes --------------------------------------------------------------------------------

    async def _probe_lifecycle(self, c: Container) -> None:
        startup = c.spec.get("startupProbe")
        if startup and not c.init:
            ok = await self._until_success(c, Probe(startup), "startup")
            if not ok:
                await self._restart_container(c, "startup probe")
                return
        c.started = True
        self.mark()
        if c.init:
            return
        tasks = []
        live = c.spec.get("livenessProbe")
        if live:
            tasks.append(asyncio.create_task(self._liveness(c, Probe(live))))
        ready = c.spec.get("readinessProbe")
        if ready:
            tasks.append(asyncio.create_task(self._readiness(c, Probe(ready))))
        else:
            c.ready = True
            self.mark()
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()

    async def _until_success(self, c: Container, p: Probe, kind: str) -> bool:
        """Probe fast until the first success; failures count once per period."""
        await asyncio.sleep(p.initial_delay)
        next_tick = time.monotonic() + p.period
        failures = 0
        while True:
            if await self._probe(c, p.spec, p.timeout):
                return True
            if time.monotonic() >= next_tick:
                failures += 1
                next_tick += p.period
                self.event("Warning", "Unhealthy", f"{kind.capitalize()} probe failed", c)
                if failures >= p.failure_threshold:
                    log.info(
                        "%s: %s probe of %s failed %d times", self.ident, kind, c.name, failures
                    )
                    return False
            await asyncio.sleep(min(FAST_PROBE_S, p.period))

    async def _readiness(self, c: Container, p: Probe) -> None:
        if not await self._until_success(c, p, "readiness"):
            # Not ready yet after failureThreshold periods: keep probing at the normal pace.
            pass
        else:
            c.ready = True
            self.mark()
        successes = failures = 0
        while True:
            await asyncio.sleep(p.period)
            if await self._probe(c, p.spec, p.timeout):
                successes += 1
                failures = 0
                if not c.ready and successes >= p.success_threshold:
                    c.ready = True
                    self.mark()
            else:
                failures += 1
                successes = 0
                self.event("Warning", "Unhealthy", "Readiness probe failed", c)
                if c.ready and failures >= p.failure_threshold:
                    c.ready = False
                    self.mark()

    async def _liveness(self, c: Container, p: Probe) -> None:
        await asyncio.sleep(p.initial_delay)
        failures = 0
        while True:
            await asyncio.sleep(p.period)
            if await self._probe(c, p.spec, p.timeout):
                failures = 0
                continue
            failures += 1
            self.event("Warning", "Unhealthy", "Liveness probe failed", c)
            if failures >= p.failure_threshold:
                await self._restart_container(c, "liveness probe")
                return

    async def _restart_container(self, c: Container, why: str) -> None:
        log.info("%s: %s failed its %s; restarting it", self.ident, c.name, why)
        c.killed_for = f"Container {c.name} failed {why}, will be restarted"
        self.event("Normal", "Killing", c.killed_for, c)
        grace = float(self.spec.get("terminationGracePeriodSeconds", 30))
        _signal(c, signal.SIGTERM)
        await _wait_exit([c], grace)
        if _alive(c):
            _signal(c, signal.SIGKILL)

    async def _probe(self, c: Container, spec: dict[str, Any], limit_s: float) -> bool:
        try:
            if "httpGet" in spec:
                status = await self._http_get(c, spec["httpGet"], limit_s)
                return 200 <= status < 400
            if "tcpSocket" in spec:
                host = spec["tcpSocket"].get("host") or self.pod_ip
                port = self._port(c, spec["tcpSocket"]["port"])
                _, w = await asyncio.wait_for(asyncio.open_connection(host, port), limit_s)
                w.close()
                with contextlib.suppress(Exception):
                    await w.wait_closed()
                return True
            if "exec" in spec:
                rc = await self._exec_in_pod(list(spec["exec"].get("command", [])), limit_s)
                return rc == 0
            if "grpc" in spec:
                log.warning("%s: grpc probes are not modelled; treating as success", self.ident)
                return True
        except (OSError, TimeoutError, aiohttp.ClientError):
            return False
        return True

    async def _http_get(self, c: Container, get: dict[str, Any], limit_s: float) -> int:
        host = get.get("host") or self.pod_ip
        port = self._port(c, get.get("port", 80))
        scheme = str(get.get("scheme", "HTTP")).lower()
        path = get.get("path") or "/"
        headers = {h["name"]: h["value"] for h in get.get("httpHeaders", [])}
        headers.setdefault("User-Agent", "kube-probe/1.35 (glowplug test bed)")
        async with self.agent.probe_session.get(
            f"{scheme}://{host}:{port}{path}",
            headers=headers,
            timeout=aiohttp.ClientTimeout(total=limit_s),
            ssl=False,
            allow_redirects=False,
        ) as resp:
            return resp.status

    def _port(self, c: Container, port: Any) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for p in c.spec.get("ports", []):
            if p.get("name") == port:
                return int(p["containerPort"])
        raise OSError(f"no port named {port!r}")

    async def _exec_in_pod(self, cmd: list[str], limit_s: float | None) -> int:
        if self.net is None or not cmd:
            return 1
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.net.netns, *cmd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
        try:
            return await asyncio.wait_for(proc.wait(), limit_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            return 1

    # -- env and volumes -----------------------------------------------------------------------

    async def _env(self, c: Container, image_env: dict[str, str] | None = None) -> dict[str, str]:
        agent = self.agent
        env: dict[str, str] = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": "/root",
            "HOSTNAME": self.name,
            "LANG": os.environ.get("LANG", "C.UTF-8"),
            "PYTHONPATH": str(agent.repo),
            "PYTHONUNBUFFERED": "1",
            "KUBERNETES_SERVICE_HOST": agent.host_ip,
            "KUBERNETES_SERVICE_PORT": str(agent.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(agent.api_port),
            "KUBERNETES_PORT": f"tcp://{agent.host_ip}:{agent.api_port}",
        }
        env.update(image_env or {})  # like an image's ENV: the container's env wins
        for src in c.spec.get("envFrom", []):
            prefix = src.get("prefix", "")
            if "configMapRef" in src:
                ref = src["configMapRef"]
                data = await self._object_data(
                    "configmaps", ref["name"], ref.get("optional", False)
                )
            elif "secretRef" in src:
                ref = src["secretRef"]
                data = await self._object_data("secrets", ref["name"], ref.get("optional", False))
            else:
                continue
            for k, v in (data or {}).items():
                env[prefix + k] = v
        for e in c.spec.get("env", []):
            name = e["name"]
            if "value" in e:
                env[name] = expand(str(e.get("value") or ""), env)
            elif "valueFrom" in e:
                got = await self._value_from(c, e["valueFrom"])
                if got is not None:
                    env[name] = got
            else:
                env[name] = ""
        return env

    async def _object_data(self, kind: str, name: str, optional: bool) -> dict[str, str] | None:
        obj = await self.agent.api.get(
            f"/api/v1/namespaces/{self.namespace}/{kind}/{name}", ok_missing=True
        )
        if obj is None:
            if optional:
                return None
            raise ConfigError(f'{kind[:-1]} "{name}" not found')
        data: dict[str, str] = {}
        if kind == "secrets":
            for k, v in (obj.get("data") or {}).items():
                data[k] = base64.b64decode(v).decode(errors="replace")
            data.update(obj.get("stringData") or {})
        else:
            data.update(obj.get("data") or {})
        return data

    async def _value_from(self, c: Container, vf: dict[str, Any]) -> str | None:
        for kind, key in (("secrets", "secretKeyRef"), ("configmaps", "configMapKeyRef")):
            if key in vf:
                ref = vf[key]
                optional = bool(ref.get("optional", False))
                data = await self._object_data(kind, ref["name"], optional)
                if data is None:
                    return None
                if ref["key"] not in data:
                    if optional:
                        return None
                    raise ConfigError(
                        f"couldn't find key {ref['key']} in {kind[:-1]} "
                        f"{self.namespace}/{ref['name']}"
                    )
                return data[ref["key"]]
        if "fieldRef" in vf:
            return self._field(vf["fieldRef"]["fieldPath"])
        if "resourceFieldRef" in vf:
            res = vf["resourceFieldRef"].get("resource", "")
            kind, _, what = res.partition(".")
            val = (c.spec.get("resources", {}).get(kind) or {}).get(what)
            return str(val) if val is not None else "0"
        return None

    def _field(self, path: str) -> str:
        meta = self.pod["metadata"]
        m = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]", path)
        if m:
            return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
        values = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": self.uid,
            "spec.nodeName": self.agent.node_name,
            "spec.serviceAccountName": self.spec.get("serviceAccountName", "default"),
            "status.podIP": self.pod_ip or "",
            "status.podIPs": self.pod_ip or "",
            "status.hostIP": self.agent.host_ip,
            "status.hostIPs": self.agent.host_ip,
        }
        return str(values.get(path, ""))

    async def _prepare_volumes(self) -> None:
        self.volume_dirs: dict[str, Path] = {}
        for v in self.spec.get("volumes", []):
            name = v["name"]
            d = self.dir / "volumes" / name
            if "hostPath" in v:
                path = Path(v["hostPath"]["path"])
                if v["hostPath"].get("type") in ("DirectoryOrCreate", None, ""):
                    path.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (local, quick)
                self.volume_dirs[name] = path
                continue
            if "persistentVolumeClaim" in v:
                # No storage provisioner: a claim is a directory kept across pods.
                claim = v["persistentVolumeClaim"]["claimName"]
                path = self.agent.state_dir / "claims" / self.namespace / claim
                path.mkdir(parents=True, exist_ok=True)
                self.volume_dirs[name] = path
                continue
            d.mkdir(parents=True, exist_ok=True)
            self.volume_dirs[name] = d
            if "secret" in v:
                await self._write_items(d, "secrets", v["secret"]["secretName"], v["secret"])
            elif "configMap" in v:
                await self._write_items(d, "configmaps", v["configMap"]["name"], v["configMap"])
            elif "projected" in v:
                for src in v["projected"].get("sources", []):
                    if "serviceAccountToken" in src:
                        tok = src["serviceAccountToken"]
                        target = d / tok.get("path", "token")
                        self._token_paths.append((target, tok))
                        await self._write_token(target, tok)
                    elif "configMap" in src:
                        await self._write_items(
                            d, "configmaps", src["configMap"]["name"], src["configMap"]
                        )
                    elif "secret" in src:
                        await self._write_items(d, "secrets", src["secret"]["name"], src["secret"])
                    elif "downwardAPI" in src:
                        self._write_downward(d, src["downwardAPI"])
            elif "downwardAPI" in v:
                self._write_downward(d, v["downwardAPI"])
            # emptyDir and anything else: an empty directory.

    async def _write_items(self, d: Path, kind: str, name: str, src: dict[str, Any]) -> None:
        data = await self._object_data(kind, name, bool(src.get("optional", False)))
        if data is None:
            return
        items = src.get("items")
        pairs = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
        for key, rel in pairs:
            if key in data:
                _write_atomic(d / rel, data[key].encode())

    def _write_downward(self, d: Path, src: dict[str, Any]) -> None:
        for item in src.get("items", []):
            if "fieldRef" in item:
                _write_atomic(d / item["path"], self._field(item["fieldRef"]["fieldPath"]).encode())

    async def _write_token(self, target: Path, tok: dict[str, Any]) -> None:
        sa = self.spec.get("serviceAccountName") or "default"
        body: dict[str, Any] = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": int(tok.get("expirationSeconds", 3607)),
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": self.name,
                    "uid": self.uid,
                },
            },
        }
        if tok.get("audience"):
            body["spec"]["audiences"] = [tok["audience"]]
        resp = await self.agent.api.request(
            "POST", f"/api/v1/namespaces/{self.namespace}/serviceaccounts/{sa}/token", body
        )
        _write_atomic(target, resp["status"]["token"].encode())

    async def _refresh_tokens(self) -> None:
        # The kubelet refreshes at 80% of the lifetime; tokens here live about an hour.
        while True:
            await asyncio.sleep(2400)
            for target, tok in self._token_paths:
                with contextlib.suppress(Exception):
                    await self._write_token(target, tok)

    def _repo_keep_dir(self, mount_paths: list[str]) -> Path | None:
        """Where to keep the checkout while volumes cover it; None when none covers it."""

        def covered(path: Path) -> bool:
            return any(path == Path(m) or Path(m) in path.parents for m in mount_paths)

        if not covered(REPO):
            return None
        for keep in (self.dir / "repo", Path("/run/glowplug-testbed") / self.uid / "repo"):
            if not covered(keep):
                return keep
        raise RuntimeError(f"volume mounts {mount_paths} hide the checkout {REPO}")

    def _mounts(self, c: Container) -> list[tuple[Path, str, bool]]:
        out = []
        for m in c.spec.get("volumeMounts", []):
            src = self.volume_dirs.get(m["name"])
            if src is None:
                continue
            if m.get("subPath"):
                src = src / m["subPath"]
                if not src.exists():
                    src.mkdir(parents=True, exist_ok=True)
            out.append((src, str(m["mountPath"]), bool(m.get("readOnly", False))))
        return out

    # -- status --------------------------------------------------------------------------------

    def mark(self) -> None:
        self.dirty.set()

    def status(self) -> dict[str, Any]:
        cs = [c.status() for c in self.containers]
        ics = [c.status() for c in self.init_containers]
        all_ready = bool(self.containers) and all(c.ready for c in self.containers)
        if self.phase not in ("Succeeded", "Failed"):
            # As the kubelet: Running once a container runs or is being restarted.
            running = any("running" in c.state or c.restart_count for c in self.containers)
            self.phase = "Running" if running and self.initialized else "Pending"
        conds = [
            self._cond(
                "PodReadyToStartContainers", self.net is not None or self.phase != "Pending"
            ),
            self._cond("Initialized", self.initialized),
            self._cond("ContainersReady", all_ready, "" if all_ready else "ContainersNotReady"),
            self._cond("Ready", all_ready, "" if all_ready else "ContainersNotReady"),
            self._cond("PodScheduled", True),
        ]
        st: dict[str, Any] = {
            "phase": self.phase,
            "conditions": conds,
            "hostIP": self.agent.host_ip,
            "hostIPs": [{"ip": self.agent.host_ip}],
            "startTime": self.start_time,
            "containerStatuses": cs,
        }
        if ics:
            st["initContainerStatuses"] = ics
        if self.pod_ip:
            st["podIP"] = self.pod_ip
            st["podIPs"] = [{"ip": self.pod_ip}]
        return st

    def _cond(self, ctype: str, ok: bool, reason: str = "") -> dict[str, Any]:
        status = "True" if ok else "False"
        key = f"{ctype}={status}"
        if self.transitions.get(ctype, "").split("@")[0] != key:
            self.transitions[ctype] = f"{key}@{now_rfc3339()}"
        c: dict[str, Any] = {
            "type": ctype,
            "status": status,
            "lastProbeTime": None,
            "lastTransitionTime": self.transitions[ctype].split("@")[1],
        }
        if reason:
            c["reason"] = reason
            not_ready = [x.name for x in self.containers if not x.ready]
            c["message"] = f"containers with unready status: [{' '.join(not_ready)}]"
        return c

    async def _status_writer(self) -> None:
        while True:
            await self.dirty.wait()
            self.dirty.clear()
            st = self.status()
            if st == self._last_status:
                continue
            try:
                await self.agent.api.merge_patch(
                    f"/api/v1/namespaces/{self.namespace}/pods/{self.name}/status", {"status": st}
                )
                self._last_status = st
            except ApiError as e:
                if e.status == 404:
                    return
                log.warning("%s: status update failed: %s", self.ident, e)
                await asyncio.sleep(0.5)
                self.mark()
            except (aiohttp.ClientError, TimeoutError) as e:
                log.warning("%s: status update failed: %s", self.ident, e)
                await asyncio.sleep(0.5)
                self.mark()


def _alive(c: Container) -> bool:
    return c.proc is not None and c.proc.returncode is None


def _signal(c: Container, sig: signal.Signals) -> None:
    if c.proc is None or c.proc.returncode is not None:
        return
    # Each container leads its own session; signal the whole group (its children too).
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(c.proc.pid, sig)


async def _wait_exit(cs: list[Container], limit_s: float) -> None:
    waits = [c.proc.wait() for c in cs if c.proc is not None and c.proc.returncode is None]
    if waits:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*waits, return_exceptions=True), timeout=max(limit_s, 0.0)
            )


def _sleep_seconds(cmd: list[str]) -> float | None:
    """N for ``sleep N`` or ``sh -c "sleep N"``, else None."""
    words = cmd
    if len(cmd) == 3 and cmd[0].rsplit("/", 1)[-1] in ("sh", "bash") and cmd[1] == "-c":
        words = shlex.split(cmd[2])
    if len(words) == 2 and words[0].rsplit("/", 1)[-1] == "sleep":
        with contextlib.suppress(ValueError):
            return float(words[1])
    return None


def _write_atomic(path: Path, data: bytes) -> None:
    # Rename in place, so a reader never sees half a token (and a bind mount of the
    # directory shows the new file at once).
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
