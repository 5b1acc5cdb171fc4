"""The test bed's API audit log: who asked the API server for what.

The API server's own ``apiserver_request_total`` has no user or user-agent label, so it
cannot tell glowplug's requests from the controller-manager's. The audit log can: every
request it records carries ``userAgent``, ``user``, ``verb`` and ``objectRef``
(https://kubernetes.io/docs/tasks/debug/debug-cluster/audit/, "Audit policy" and the
``audit.k8s.io/v1`` Event). The policy records nothing from the control plane's own
components (the bulk of the traffic) and one line per finished request (stage
ResponseComplete, or ResponseStarted for a watch) from everyone else, at level Metadata
(no bodies), so a test can count glowplug's requests by verb and resource.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: None
    users: ["system:kube-controller-manager", "system:kube-scheduler", "system:apiserver"]
  - level: None
    userGroups: ["system:serviceaccounts:kube-system", "system:nodes"]
  - level: None
    nonResourceURLs: ["/readyz*", "/livez*", "/healthz*", "/version", "/openapi*", "/api*"]
  - level: Metadata
"""

# Watches log twice (ResponseStarted when the stream opens, ResponseComplete when it
# ends); count each request once: at its first logged stage.
_FIRST_STAGES = ("ResponseStarted", "ResponseComplete", "Panic")

# User agents of glowplug's processes: its kubernetes_asyncio clients name themselves
# (glowplug.kube.client.USER_AGENT_PREFIX) and kopf's own client sends "kopf/<version>".
GLOWPLUG_AGENTS = ("glowplug", "kopf/")


@dataclass(frozen=True)
class Request:
    at: float  # requestReceivedTimestamp, seconds since the epoch
    user_agent: str
    verb: str
    resource: str  # "pods", "embeddingservices/status", ...
    namespace: str
    name: str
    code: int


def write_policy(path: Path) -> Path:
    path.write_text(POLICY)
    return path


def _epoch(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def parse(lines: Iterable[str]) -> list[Request]:
    """The requests in audit-log lines (JSON, one Event a line); partial lines skipped."""
    seen: set[str] = set()
    out: list[Request] = []
    for line in lines:
        try:
            ev = json.loads(line)
        except ValueError:
            continue  # the line being written
        if ev.get("stage") not in _FIRST_STAGES or ev.get("auditID") in seen:
            continue
        seen.add(str(ev.get("auditID")))
        ref = ev.get("objectRef") or {}
        resource = str(ref.get("resource") or ev.get("requestURI") or "")
        if ref.get("subresource"):
            resource += "/" + str(ref["subresource"])
        out.append(
            Request(
                at=_epoch(str(ev.get("requestReceivedTimestamp"))),
                user_agent=str(ev.get("userAgent") or ""),
                verb=str(ev.get("verb") or ""),
                resource=resource,
                namespace=str(ref.get("namespace") or ""),
                name=str(ref.get("name") or ""),
                code=int((ev.get("responseStatus") or {}).get("code") or 0),
            )
        )
    return out


class AuditTail:
    """Reads the requests logged since it was created (or since the last ``read``)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0

    def read(self) -> list[Request]:
        if not self.path.exists():
            return []
        size = self.path.stat().st_size
        if size < self.offset:  # rotated: start again from the new file's top
            self.offset = 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n") + 1  # keep a partly written last line for next time
        self.offset += end
        return parse(data[:end].decode(errors="replace").splitlines())


def is_glowplug(req: Request) -> bool:
    return req.user_agent.startswith(GLOWPLUG_AGENTS)


def by_verb_resource(reqs: Iterable[Request]) -> Counter[str]:
    """``"LIST pods": 12, "PATCH embeddingservices/status": 3, ...``"""
    return Counter(f"{r.verb.upper()} {r.resource}" for r in reqs)
