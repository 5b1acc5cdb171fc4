"""The local test bed itself: node, pods as processes, probes, networking, deletion."""

from __future__ import annotations

import ipaddress
import json
import os
import urllib.request
from typing import Any

import pytest

from e2e.cluster import Cluster
from e2e.cluster.procs import start_time
from e2e.tests.helpers import apply, container_pid, endpoint_ips, get, is_ready, wait_for

pytestmark = pytest.mark.cluster

# A 0.5.20+ tag: the stand-in, like SGLang, has no /ready before 0.5.20.
STANDIN_IMAGE = "lmsysorg/sglang:v0.5.23-test-bed"
PROBE_IMAGE = "glowplug-testbed/python"  # test double: python with the container's args


def pod(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    return get(cluster, "pod", name, namespace)


def standin_container(port: int = 30000, **extra: Any) -> dict[str, Any]:
    return {
        "name": "engine",
        "image": STANDIN_IMAGE,
        "command": ["python3", "-m", "sglang.launch_server"],
        "args": ["--model-path", "test/stand-in-model", "--host", "0.0.0.0",
                 "--port", str(port), "--is-embedding"],
        "ports": [{"name": "http", "containerPort": port}],
        # /ready, as glowplug's SGLang profile probes: /health takes a second (a forward).
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
        **extra,
    }  # fmt: skip


def post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.load(resp))


def test_node_is_ready_with_gpus(cluster: Cluster) -> None:
    node = json.loads(cluster.kubectl("get", "node", cluster.config.node_name, "-o", "json").stdout)
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "8"
    lease = cluster.kubectl(
        "get", "lease", cluster.config.node_name, "-n", "kube-node-lease", "-o", "json"
    )
    assert json.loads(lease.stdout)["spec"]["holderIdentity"] == cluster.config.node_name


def test_standin_pod_becomes_ready_and_answers_at_its_ip(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "engine"},
        "spec": {"containers": [standin_container()]},
    })  # fmt: skip
    p = wait_for(
        lambda: (q := pod(cluster, namespace, "engine")) and is_ready(q) and q, 60, what="Ready"
    )
    ip = p["status"]["podIP"]
    assert ipaddress.ip_address(ip) in ipaddress.ip_network(cluster.config.pod_cidr)
    assert p["status"]["phase"] == "Running"
    cs = p["status"]["containerStatuses"][0]
    assert cs["ready"] and cs["started"] and "running" in cs["state"]
    out = post_json(f"http://{ip}:30000/v1/embeddings", {"model": "m", "input": ["a b", "c"]})
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert len(out["data"][0]["embedding"]) == 1024
    assert out["model"] == "test/stand-in-model"
    with urllib.request.urlopen(f"http://{ip}:30000/model_info", timeout=5) as resp:
        assert json.load(resp)["stand_in"] is True


def test_deployment_service_endpointslice_and_scale_to_zero(
    cluster: Cluster, namespace: str
) -> None:
    labels = {"app": "engine"}
    apply(cluster, namespace, {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "engine"},
        "spec": {
            "replicas": 1, "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels},
                         "spec": {"containers": [standin_container()]}},
        },
    })  # fmt: skip
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": "engine"},
        "spec": {"selector": labels, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    })  # fmt: skip

    def ready_pod() -> dict[str, Any] | None:
        items = json.loads(
            cluster.kubectl("get", "pods", "-n", namespace, "-l", "app=engine", "-o", "json").stdout
        )["items"]
        return next((p for p in items if is_ready(p)), None)

    p = wait_for(ready_pod, 90, what="a Ready pod of the Deployment")
    ip = p["status"]["podIP"]

    def slice_ips() -> list[str]:
        return endpoint_ips(cluster, namespace, "engine")

    assert wait_for(lambda: ip in slice_ips() and slice_ips(), 60, what="EndpointSlice") == [ip]
    pid = container_pid(p, "engine")
    st = start_time(pid)
    assert st is not None, "the engine process should be running"

    cluster.kubectl("scale", "deployment/engine", "-n", namespace, "--replicas=0")
    wait_for(lambda: start_time(pid) != st, 60, what=f"engine process {pid} to exit")
    wait_for(lambda: ready_pod() is None and not slice_ips(), 60, what="no endpoints")
    assert not os.path.exists(f"/proc/{pid}/stat") or start_time(pid) != st


def test_pods_reach_each_other_through_the_host(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "server"},
        "spec": {"containers": [standin_container()]},
    })  # fmt: skip
    p = wait_for(
        lambda: (q := pod(cluster, namespace, "server")) and is_ready(q) and q, 60, what="Ready"
    )
    url = f"http://{p['status']['podIP']}:30000/model_info"
    script = f"import urllib.request; print(urllib.request.urlopen({url!r}, timeout=5).status)"
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "probe", "image": PROBE_IMAGE, "args": ["-c", script]}]},
    })  # fmt: skip
    q = wait_for(
        lambda: (
            (c := pod(cluster, namespace, "client"))["status"].get("phase")
            in ("Succeeded", "Failed")
            and c
        ),
        60,
        what="the client pod to finish",
    )
    out = cluster.pod_logs(namespace, "client", "probe")
    assert q["status"]["phase"] == "Succeeded", out
    assert out.strip().endswith("200")


def test_service_account_token_works_inside_a_pod(cluster: Cluster, namespace: str) -> None:
    script = (
        "import json, os, ssl, urllib.request\n"
        "d = '/var/run/secrets/kubernetes.io/serviceaccount'\n"
        "ctx = ssl.create_default_context(cafile=d + '/ca.crt')\n"
        "url = 'https://%s:%s/apis/authentication.k8s.io/v1/selfsubjectreviews' % ("
        "os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])\n"
        "body = json.dumps({'apiVersion': 'authentication.k8s.io/v1', "
        "'kind': 'SelfSubjectReview'}).encode()\n"
        "req = urllib.request.Request(url, data=body, headers={'Content-Type': "
        "'application/json', 'Authorization': 'Bearer ' + open(d + '/token').read()})\n"
        "user = json.load(urllib.request.urlopen(req, context=ctx))['status']['userInfo']\n"
        "print('USER=' + user['username'] + ' NS=' + open(d + '/namespace').read())\n"
    )
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "whoami"},
        "spec": {"restartPolicy": "Never",
                 "containers": [{"name": "probe", "image": PROBE_IMAGE, "args": ["-c", script]}]},
    })  # fmt: skip
    p = wait_for(
        lambda: (
            (q := pod(cluster, namespace, "whoami"))["status"].get("phase")
            in ("Succeeded", "Failed")
            and q
        ),
        60,
        what="the pod to finish",
    )
    # kubectl logs goes API server -> the agent's log endpoint (client certificate).
    text = cluster.kubectl("logs", "whoami", "-n", namespace).stdout
    assert p["status"]["phase"] == "Succeeded", text
    assert f"USER=system:serviceaccount:{namespace}:default NS={namespace}" in text


def test_init_container_volumes_and_env(cluster: Cluster, namespace: str) -> None:
    cluster.kubectl(
        "create", "secret", "generic", "creds", "-n", namespace, "--from-literal=token=s3cret"
    )
    mount = "/run/glowplug-testbed/shared"  # a mount point; bound only inside the pod
    writer = f"open({mount + '/greeting'!r}, 'w').write('hello from init')"
    reader = (
        "import os\n"
        f"print('GREETING=' + open({mount + '/greeting'!r}).read())\n"
        "e = os.environ\n"
        "print('TOKEN=' + e['HF_TOKEN'] + ' POD=' + e['POD'] + ' IP=' + e['IP'])\n"
    )
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "volumes"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "shared", "emptyDir": {}}],
            "initContainers": [{"name": "init", "image": PROBE_IMAGE, "args": ["-c", writer],
                                "volumeMounts": [{"name": "shared", "mountPath": mount}]}],
            "containers": [{
                "name": "main", "image": PROBE_IMAGE, "args": ["-c", reader],
                "volumeMounts": [{"name": "shared", "mountPath": mount, "readOnly": True}],
                "env": [
                    {"name": "HF_TOKEN",
                     "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
                ],
            }],
        },
    })  # fmt: skip
    p = wait_for(
        lambda: (
            (q := pod(cluster, namespace, "volumes"))["status"].get("phase")
            in ("Succeeded", "Failed")
            and q
        ),
        60,
        what="the pod to finish",
    )
    out = cluster.pod_logs(namespace, "volumes")
    assert p["status"]["phase"] == "Succeeded", out
    assert "GREETING=hello from init" in out
    assert f"TOKEN=s3cret POD=volumes IP={p['status']['podIP']}" in out
    assert p["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0


def test_missing_secret_is_a_create_container_config_error(
    cluster: Cluster, namespace: str
) -> None:
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nosecret"},
        "spec": {"containers": [{
            "name": "engine", "image": STANDIN_IMAGE,
            "env": [{"name": "HF_TOKEN",
                     "valueFrom": {"secretKeyRef": {"name": "absent", "key": "token"}}}],
        }]},
    })  # fmt: skip

    def waiting() -> dict[str, Any] | None:
        cs = pod(cluster, namespace, "nosecret")["status"].get("containerStatuses") or [{}]
        w = cs[0].get("state", {}).get("waiting", {})
        return w if w.get("reason") == "CreateContainerConfigError" else None

    assert 'secret "absent" not found' in wait_for(waiting, 30, what="the config error")["message"]


def test_secret_volume_waits_for_its_secret(cluster: Cluster, namespace: str) -> None:
    mount = "/run/glowplug-testbed/secret"
    script = f"print('KEY=' + open({mount + '/key'!r}).read())"
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "mounts"},
        "spec": {
            "restartPolicy": "Never",
            "volumes": [{"name": "s", "secret": {"secretName": "later"}}],
            "containers": [{"name": "c", "image": PROBE_IMAGE, "args": ["-c", script],
                            "volumeMounts": [{"name": "s", "mountPath": mount}]}],
        },
    })  # fmt: skip

    def creating() -> bool:
        cs = pod(cluster, namespace, "mounts")["status"].get("containerStatuses") or [{}]
        w = cs[0].get("state", {}).get("waiting", {})
        return w.get("reason") == "ContainerCreating" and "later" in w.get("message", "")

    wait_for(creating, 30, what="ContainerCreating while the Secret is missing")
    cluster.kubectl(
        "create", "secret", "generic", "later", "-n", namespace, "--from-literal=key=v1"
    )
    wait_for(
        lambda: pod(cluster, namespace, "mounts")["status"].get("phase") == "Succeeded",
        60,
        what="the pod to run once the Secret exists",
    )
    assert "KEY=v1" in cluster.pod_logs(namespace, "mounts", "c")


def test_crashing_container_shows_crash_loop_back_off(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "crasher"},
        "spec": {"containers": [{"name": "engine", "image": STANDIN_IMAGE,
                                 "env": [{"name": "STANDIN_FAIL", "value": "1"}]}]},
    })  # fmt: skip

    def crash_looping() -> dict[str, Any] | None:
        cs = pod(cluster, namespace, "crasher")["status"].get("containerStatuses") or [{}]
        waiting = cs[0].get("state", {}).get("waiting", {})
        return cs[0] if waiting.get("reason") == "CrashLoopBackOff" else None

    first = wait_for(crash_looping, 60, what="CrashLoopBackOff")
    assert first["restartCount"] >= 1
    assert first["lastState"]["terminated"]["exitCode"] == 1
    wait_for(
        lambda: (s := crash_looping()) and s["restartCount"] > first["restartCount"],
        120,
        what="a rising restartCount",
    )

    def back_off_events() -> str:
        return cluster.kubectl(
            "get", "events", "-n", namespace, "-o", "name",
            "--field-selector", "involvedObject.name=crasher,reason=BackOff",
        ).stdout.strip()  # fmt: skip

    wait_for(back_off_events, 30, what="a BackOff event, as the kubelet records")


def test_readiness_and_liveness_probes(cluster: Cluster, namespace: str, tmp_path: Any) -> None:
    ready_flag = tmp_path / "ready"
    live_flag = tmp_path / "live"
    ready_flag.touch()
    live_flag.touch()
    # Test double: /ready answers 200 while the flag file exists, 503 after.
    script = (
        "import http.server, os\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        f"        ok = os.path.exists({str(ready_flag)!r})\n"
        "        self.send_response(200 if ok else 503); self.end_headers()\n"
        "    def log_message(self, *a): pass\n"
        "http.server.HTTPServer(('0.0.0.0', 8080), H).serve_forever()\n"
    )
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "probed"},
        "spec": {"containers": [{
            "name": "app", "image": PROBE_IMAGE, "args": ["-c", script],
            "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080},
                               "periodSeconds": 1, "failureThreshold": 1},
            "livenessProbe": {"exec": {"command": ["test", "-e", str(live_flag)]},
                              "periodSeconds": 1, "failureThreshold": 2},
        }]},
    })  # fmt: skip
    wait_for(lambda: is_ready(pod(cluster, namespace, "probed")), 60, what="Ready")
    ready_flag.unlink()
    wait_for(lambda: not is_ready(pod(cluster, namespace, "probed")), 30, what="not Ready")
    ready_flag.touch()
    wait_for(lambda: is_ready(pod(cluster, namespace, "probed")), 30, what="Ready again")
    live_flag.unlink()

    def restarted() -> bool:
        cs = pod(cluster, namespace, "probed")["status"]["containerStatuses"][0]
        return bool(cs["restartCount"] >= 1)

    wait_for(restarted, 60, what="a liveness restart")
    live_flag.touch()
    wait_for(lambda: is_ready(pod(cluster, namespace, "probed")), 60, what="Ready after restart")


def test_unmapped_image_reports_image_pull_back_off(cluster: Cluster, namespace: str) -> None:
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "nope"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/nothing:1"}]},
    })  # fmt: skip

    def waiting() -> dict[str, Any] | None:
        cs = pod(cluster, namespace, "nope")["status"].get("containerStatuses") or [{}]
        w = cs[0].get("state", {}).get("waiting", {})
        return w if w.get("reason") == "ImagePullBackOff" else None

    w = wait_for(waiting, 30, what="ImagePullBackOff")
    assert "image map" in w["message"]


def test_deletion_runs_pre_stop_then_sigterm(
    cluster: Cluster, namespace: str, tmp_path: Any
) -> None:
    marker = tmp_path / "events.txt"
    marker.touch()
    # The test double records when SIGTERM arrives; preStop `sleep 2` must come first.
    script = (
        "import signal, sys, time\n"
        f"f = open({str(marker)!r}, 'a')\n"
        "def term(*_):\n"
        "    f.write('SIGTERM %f\\n' % time.time()); f.flush(); sys.exit(0)\n"
        "signal.signal(signal.SIGTERM, term)\n"
        "f.write('START %f\\n' % time.time()); f.flush()\n"
        "while True: time.sleep(1)\n"
    )
    apply(cluster, namespace, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "graceful"},
        "spec": {
            "terminationGracePeriodSeconds": 20,
            "containers": [{
                "name": "app", "image": PROBE_IMAGE, "args": ["-c", script],
                "lifecycle": {"preStop": {"exec": {"command": ["sleep", "2"]}}},
            }],
        },
    })  # fmt: skip
    wait_for(lambda: "START" in marker.read_text(), 60, what="the process to start")
    p = pod(cluster, namespace, "graceful")
    pid = container_pid(p, "app")
    cluster.kubectl("delete", "pod", "graceful", "-n", namespace, "--wait=false")
    import time

    t_delete = time.time()
    wait_for(lambda: "SIGTERM" in marker.read_text(), 30, what="SIGTERM")
    t_term = float(marker.read_text().split("SIGTERM ")[1].split()[0])
    assert t_term - t_delete >= 1.5, "SIGTERM must follow the 2 s preStop hook"
    wait_for(
        lambda: (
            cluster.kubectl("get", "pod", "graceful", "-n", namespace, check=False).returncode != 0
        ),
        30,
        what="the pod object to be removed",
    )
    assert start_time(pid) is None
