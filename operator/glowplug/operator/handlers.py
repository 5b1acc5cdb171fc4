"""kopf handlers: watch events in, server-side applies and status writes out.

Why ``@kopf.on.event`` rather than kopf's create/update/resume handlers: the wake path
(``spec.replicas`` 0 -> 1 through the scale subresource) must reach the Deployment within
a second. Change-detection handlers make kopf write its diff-base and progress
annotations back on every change (an extra write racing the activator's and the
autoscaler's compare-and-swap), and a failed handler retries after kopf's back-off. An
event handler does neither: every ADDED/MODIFIED event (the initial listing at start-up
included, which is the "resume") is reconciled at once, idempotently, with server-side
apply. Events of a generation already applied (our own status writes, the ledger's) are
skipped without an API call.

Deletion needs no handler: the Deployment and Service carry an owner reference to the
EmbeddingService, so the garbage collector removes them. (kopf still adds its finalizer,
named ``FINALIZER`` here, because the autoscaler runs one kopf daemon per object and kopf
stops daemons before it lets the object go.)
"""

from __future__ import annotations

import asyncio
import copy
import inspect
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kopf

from glowplug.api.spec import GROUP, PLURAL, VERSION, EmbeddingService, SpecError, parse
from glowplug.kube import labels
from glowplug.kube.client import BOOKMARK_INTERVAL, CONNECT_TIMEOUT, READ_TIMEOUT, new_api_client
from glowplug.operator import conditions as cond
from glowplug.operator import render
from glowplug.operator.kube import Kube, Manifest, StatusMutation
from glowplug.operator.servicemetrics import REPLICAS, SERVICE_INFO

log = logging.getLogger(__name__)

# kopf's finalizer on EmbeddingServices (for the autoscaler's per-object daemon), under
# our own name so `kubectl get -o yaml` says whose it is.
FINALIZER = "glowplug.dev/finalizer"
# How often a Secret that is missing is looked for again (no watch on Secrets: the
# operator needs only `get` on them).
SECRET_RECHECK_SECONDS = 5.0
# Back-off for API errors while reconciling: 1 s doubling to 30 s.
RETRY_MIN_SECONDS = 1.0
RETRY_MAX_SECONDS = 30.0
# The reconciler's API calls in flight at once: below the client's connection pool.
RECONCILE_CONCURRENCY = 16

Emit = Callable[[Mapping[str, Any], str, str, str], None]
Key = tuple[str, str]


def kopf_emit(body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
    """Post a Kubernetes Event on the EmbeddingService through kopf's event poster."""
    kopf.event(dict(body), type=type_, reason=reason, message=message)  # type: ignore[arg-type]


def ref_of(body: Mapping[str, Any]) -> dict[str, Any]:
    """Just enough of the object to post an Event on it."""
    meta = body.get("metadata") or {}
    return {
        "apiVersion": body.get("apiVersion", f"{GROUP}/{VERSION}"),
        "kind": body.get("kind", "EmbeddingService"),
        "metadata": {k: meta.get(k) for k in ("name", "namespace", "uid")},
    }


@dataclass
class _State:
    """What the reconciler remembers about one EmbeddingService (lost on restart; the
    initial listing rebuilds it)."""

    applied_generation: int | None = None
    # The spec (without replicas) last applied in full: a change of replicas alone takes
    # the fast path (one apply of the Deployment, no Secret or Service round trips).
    applied_spec: dict[str, Any] | None = None
    # What the Deployment holds (from our applies and its watch events), for Events.
    dep_replicas: int | None = None
    dep_hash: str | None = None
    # The Deployment resourceVersion whose status is already in our status: kopf re-lists
    # every watch cycle and replays each object as an event; an unchanged one needs no
    # status read (an idle service costs nothing, DESIGN.md invariant 6).
    dep_status_rv: str | None = None
    # The Deployment's figures (spec.replicas, status.replicas, readyReplicas) and the
    # generation last written into our status (or found there already). The Deployment
    # controller updates status several times after each create or scale (conditions,
    # observedGeneration) without changing these: such an event needs no read and no
    # write (a status read per event was most of a large start-up's late requests).
    dep_figures: tuple[int, int, int, int | None] | None = None
    # Before this process's first reconcile of the object (a start-up or a failover): the
    # Deployment and Service as kopf's watches listed them, if they came first. When they
    # already hold what would be applied, nothing is applied (a failover re-applied both
    # for every service: 4 requests each, a peak of 256/s at 1,000 services).
    resumed: bool = True
    seen_deployment: Mapping[str, Any] | None = None
    seen_service: Mapping[str, Any] | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    retry: asyncio.Task[None] | None = None
    backoff: float = field(default_factory=lambda: RETRY_MIN_SECONDS)
    last_warning: tuple[str, str] | None = None
    info_labels: tuple[str, ...] | None = None


class _GatedKube:
    """The reconciler's API calls, at most ``limit`` at once. A start-up or a failover
    hands kopf every object together: unbounded, their calls would queue for the
    client's connection pool and time out there (aiohttp's connect timeout covers the
    wait for a pooled connection). The bound is on calls, not on reconciles: a reconcile
    with nothing to send (a failover's objects already in place) never waits, and a
    wake's apply queues behind the calls in flight, not behind 10,000 reconciles."""

    def __init__(self, kube: Kube, limit: int) -> None:
        self._kube = kube
        self._gate = asyncio.Semaphore(limit)

    async def apply(self, manifest: Manifest) -> tuple[Manifest, bool]:
        async with self._gate:
            return await self._kube.apply(manifest)

    async def list_managed(self, kind: str, namespace: str | None) -> list[Manifest]:
        async with self._gate:
            return await self._kube.list_managed(kind, namespace)

    async def secret_keys(self, namespace: str, name: str) -> set[str] | None:
        async with self._gate:
            return await self._kube.secret_keys(namespace, name)

    async def get_embsvc(self, namespace: str, name: str) -> Manifest | None:
        async with self._gate:
            return await self._kube.get_embsvc(namespace, name)

    async def update_status(
        self, namespace: str, name: str, mutate: StatusMutation, *, body: Mapping[str, Any] | None
    ) -> Manifest | None:
        if body is not None:
            # Nothing to write against the body in hand (the mutations are pure): no
            # call, so no slot to wait for.
            patch = mutate(body)
            if inspect.isawaitable(patch):
                patch = await patch
            if not patch:
                return None
        async with self._gate:
            return await self._kube.update_status(namespace, name, mutate, body=body)


class Reconciler:
    """EmbeddingService -> Deployment + Service, and Deployment -> status."""

    def __init__(self, kube: Kube, emit: Emit = kopf_emit, namespaces: Sequence[str] = ()) -> None:
        self.kube = _GatedKube(kube, RECONCILE_CONCURRENCY)
        self.emit = emit
        self.namespaces = tuple(namespaces)  # watched ones (empty: all)
        self.states: dict[Key, _State] = {}
        self._primed: asyncio.Task[None] | None = None

    def state(self, key: Key) -> _State:
        return self.states.setdefault(key, _State())

    async def prime(self) -> None:
        """Before this process's first reconcile: one paginated LIST of the Deployments
        and of the Services glowplug manages, as what a resumed reconcile compares with.
        Then a reconcile needs no read: an object listed and in place is left alone (a
        failover applies nothing), one not listed did not exist (the apply creates it).
        kopf's watches deliver the same objects, but in no order against the
        EmbeddingServices'. Globbed namespaces cannot be listed by name: no priming
        there (a resumed reconcile then applies what its watch has not shown yet)."""
        if self._primed is None:
            self._primed = asyncio.create_task(self._prime(), name="prime")
        await asyncio.shield(self._primed)

    async def _prime(self) -> None:
        if any(ch in ns for ns in self.namespaces for ch in "*?["):
            return
        try:
            for kind in ("Deployment", "Service"):
                for ns in self.namespaces or (None,):
                    for obj in await self.kube.list_managed(kind, ns):
                        self._seen(kind, obj)
        except Exception as err:
            log.warning("listing what glowplug manages failed (%s): applying instead", err)

    def _seen(self, kind: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        name = (meta.get("labels") or {}).get(labels.SERVICE_LABEL)
        if not name or meta.get("deletionTimestamp"):
            return
        st = self.state((str(meta.get("namespace")), str(name)))
        if not st.resumed or st.applied_generation is not None:
            return  # already reconciled: its watch events are newer than this list
        if kind == "Deployment":
            if st.seen_deployment is None:
                st.seen_deployment = obj
                self._remember_deployment(st, obj)
        elif st.seen_service is None:
            st.seen_service = obj

    # --- EmbeddingService events -------------------------------------------------------
    async def on_embsvc_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        key = (str(meta.get("namespace")), str(meta.get("name")))
        if event_type == "DELETED":
            self.forget(key)
            return
        if meta.get("deletionTimestamp"):
            return  # the garbage collector takes the rest
        st = self.state(key)
        if st.applied_generation == meta.get("generation") and st.retry is None:
            return  # a status-only change (ours or the ledger's)
        await self.reconcile(copy.deepcopy(dict(body)))

    def forget(self, key: Key) -> None:
        st = self.states.pop(key, None)
        if st and st.retry:
            st.retry.cancel()
        if st and st.info_labels:
            SERVICE_INFO.remove(*st.info_labels)
        for state in ("desired", "ready"):
            REPLICAS.remove(key[0], key[1], state)

    async def reconcile(self, body: dict[str, Any]) -> None:
        await self.prime()
        meta = body["metadata"]
        key = (meta["namespace"], meta["name"])
        st = self.state(key)
        async with st.lock:
            try:
                await self._reconcile(body, st)
            except Exception as err:  # API errors, timeouts: try again, never give up
                delay = st.backoff
                st.backoff = min(st.backoff * 2, RETRY_MAX_SECONDS)
                log.warning("reconcile %s/%s failed (%s); retry in %.0fs", *key, err, delay)
                self.schedule(key, delay)
            else:
                st.backoff = RETRY_MIN_SECONDS

    def schedule(self, key: Key, delay: float) -> None:
        """Reconcile ``key`` again after ``delay`` (one pending retry per object)."""
        st = self.state(key)
        if st.retry is not None and not st.retry.done():
            return
        st.retry = asyncio.create_task(self._retry(key, delay), name=f"reconcile {key}")

    async def _retry(self, key: Key, delay: float) -> None:
        await asyncio.sleep(delay)
        st = self.state(key)
        st.retry = None
        try:
            body = await self.kube.get_embsvc(*key)
        except Exception as err:
            log.warning("re-reading %s/%s failed (%s)", *key, err)
            self.schedule(key, min(delay * 2, RETRY_MAX_SECONDS))
            return
        if body is None:
            self.forget(key)
            return
        st.applied_generation = None
        st.applied_spec = None
        await self.reconcile(body)

    async def _reconcile(self, body: dict[str, Any], st: _State) -> None:
        meta = body["metadata"]
        namespace, name, generation = meta["namespace"], meta["name"], meta.get("generation")
        if meta.get("deletionTimestamp"):
            return  # being deleted: never re-create what the garbage collector removes
        selector = f"{labels.SERVICE_LABEL}={name}"
        try:
            svc = parse(body)
        except SpecError as err:
            await self._fail(body, st, cond.INVALID_SPEC, f"invalid spec: {err}", selector)
            st.applied_generation = generation
            return
        spec_without_replicas = {k: v for k, v in body["spec"].items() if k != "replicas"}
        service_created = False
        if st.applied_spec != spec_without_replicas:
            st.applied_spec = None
            self._info(svc, st)
            problem = await self._secret_problem(svc)
            service_created = await self._apply_service(svc, body, st)
            if problem:
                if service_created:
                    self.emit(ref_of(body), "Normal", "Created", f"created Service {svc.name}")
                # Pods could not start without it: leave the Deployment as it is, say why,
                # and look again shortly (the Secret may be created after the service).
                await self._fail(body, st, cond.SECRET_NOT_FOUND, problem, selector)
                st.applied_generation = generation
                self.schedule((namespace, name), SECRET_RECHECK_SECONDS)
                return

        dep = await self._apply_deployment(svc, body, st, service_created)
        st.applied_generation = generation
        st.applied_spec = spec_without_replicas
        st.resumed = False
        st.seen_deployment = st.seen_service = None
        st.last_warning = None
        await self.write_status(body, dep, clear_spec_failures=True)
        # This Deployment's status is in ours now: its replay by a kopf re-list is a no-op.
        st.dep_status_rv = str((dep.get("metadata") or {}).get("resourceVersion") or "") or None

    def _info(self, svc: EmbeddingService, st: _State) -> None:
        labels = (
            svc.namespace,
            svc.name,
            svc.model.id,
            svc.engine.name,
            svc.resources.gpu_label,
        )
        if st.info_labels != labels:
            if st.info_labels:
                SERVICE_INFO.remove(*st.info_labels)
            SERVICE_INFO.labels(*labels).set(1)
            st.info_labels = labels

    async def _secret_problem(self, svc: EmbeddingService) -> str | None:
        ref = svc.model.source.token_secret
        if ref is None:
            return None
        keys = await self.kube.secret_keys(svc.namespace, ref.name)
        field_path = "spec.model.source.huggingFace.tokenSecretRef"
        if keys is None:
            return f"{field_path}: Secret {svc.namespace}/{ref.name} not found"
        if ref.key not in keys:
            return (
                f"{field_path}.key: Secret {svc.namespace}/{ref.name} has no key {ref.key!r}"
                f" (keys: {', '.join(sorted(keys)) or 'none'})"
            )
        return None

    async def _apply_service(
        self, svc: EmbeddingService, body: Mapping[str, Any], st: _State | None = None
    ) -> bool:
        """Apply the Service; whether that created it (said with the Deployment's event)."""
        manifest = render.render_service(svc)
        old = st.seen_service if st is not None and st.resumed else None
        if old is not None and covers(manifest, old):
            return False  # resumed, and the Service is what we would apply
        _, created = await self.kube.apply(manifest)
        return created

    async def _apply_deployment(
        self,
        svc: EmbeddingService,
        body: Mapping[str, Any],
        st: _State,
        service_created: bool = False,
    ) -> dict[str, Any]:
        # No read first: the apply says whether it created the Deployment, and what a
        # resumed operator's watch already delivered (seen_deployment) can skip it.
        old = st.seen_deployment if st.resumed else None
        before, old_hash = st.dep_replicas, st.dep_hash
        manifest = render.render_deployment(svc)
        if old is not None and covers(without_template(manifest), old):
            # Resumed, and the Deployment already holds this template (its hash) and
            # everything else we render: nothing to apply.
            return dict(old)
        dep, created = await self.kube.apply(manifest)
        self._remember_deployment(st, dep)
        want = manifest["spec"]["replicas"]
        ref = ref_of(body)
        # One event for what a reconcile created (an Event is a request: 10,000 services
        # at a cold start cost 10,000 of them, not 20,000).
        made = [f"Deployment {svc.name} ({want} replicas)"] if created else []
        if service_created:
            made.append(f"Service {svc.name}")
        if made:
            self.emit(ref, "Normal", "Created", "created " + " and ".join(made))
        if created:
            return dep
        # Unknown before (this operator had not seen the Deployment): no event.
        if before is not None and before != want:
            self.emit(ref, "Normal", "Scaled", f"scaled Deployment {svc.name}: {before} -> {want}")
        if old_hash is not None and old_hash != st.dep_hash:
            self.emit(ref, "Normal", "Updated", f"rolling out a new pod template to {svc.name}")
        return dep

    @staticmethod
    def _remember_deployment(st: _State, dep: Mapping[str, Any]) -> None:
        st.dep_replicas = int((dep.get("spec") or {}).get("replicas") or 0)
        annotations = (dep.get("metadata") or {}).get("annotations") or {}
        st.dep_hash = annotations.get(labels.TEMPLATE_HASH_ANNOTATION)

    async def _fail(
        self, body: Mapping[str, Any], st: _State, reason: str, message: str, selector: str
    ) -> None:
        meta = body["metadata"]
        if st.last_warning != (reason, message):
            self.emit(ref_of(body), "Warning", reason, message)
            log.warning("%s/%s: %s: %s", meta["namespace"], meta["name"], reason, message)
            st.last_warning = (reason, message)
        generation = meta.get("generation")
        st.dep_figures = None  # the phase is Failed now: the next Deployment event writes

        def mutate(current: Mapping[str, Any]) -> dict[str, Any] | None:
            return cond.failed_status(
                current,
                reason=reason,
                message=message,
                selector=selector,
                observed_generation=generation,
            )

        await self.kube.update_status(meta["namespace"], meta["name"], mutate, body=body)

    # --- Deployment -> status ----------------------------------------------------------
    async def write_status(
        self,
        body: Mapping[str, Any] | None,
        dep: Mapping[str, Any],
        *,
        clear_spec_failures: bool = False,
    ) -> None:
        meta = dep["metadata"]
        namespace = meta["namespace"]
        name = (meta.get("labels") or {}).get(labels.SERVICE_LABEL, meta["name"])
        desired, replicas, ready = deployment_figures(dep)
        REPLICAS.labels(namespace, name, "desired").set(desired)
        REPLICAS.labels(namespace, name, "ready").set(ready)
        st = self.state((namespace, name))
        figures = (desired, replicas, ready, st.applied_generation)

        def mutate(current: Mapping[str, Any]) -> dict[str, Any] | None:
            return cond.replica_status(
                current,
                desired=desired,
                replicas=replicas,
                ready=ready,
                selector=f"{labels.SERVICE_LABEL}={name}",
                observed_generation=st.applied_generation,
                clear_spec_failures=clear_spec_failures,
            )

        st.dep_figures = None  # unknown while the write is in flight (or if it fails)
        await self.kube.update_status(namespace, name, mutate, body=body)
        st.dep_figures = figures

    async def on_deployment_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        meta = body.get("metadata") or {}
        name = (meta.get("labels") or {}).get(labels.SERVICE_LABEL)
        if not name:
            return
        key = (str(meta.get("namespace")), str(name))
        if event_type == "DELETED":
            # Deleted by someone else (or by the garbage collector): put it back if its
            # EmbeddingService still exists.
            if key in self.states:
                st = self.states[key]
                st.dep_replicas = st.dep_hash = None
                self.schedule(key, 0.0)
            return
        if key not in self.states and meta.get("deletionTimestamp"):
            return  # going with its owner, which this operator has forgotten
        st = self.state(key)  # (the watch may list the Deployment before its owner)
        self._remember_deployment(st, body)
        if st.applied_generation is None:
            if st.resumed:
                st.seen_deployment = body
            return  # not reconciled yet; the reconcile writes status itself
        state = self.states.get(key)
        rv = str(meta.get("resourceVersion") or "")
        if state is not None and rv and state.dep_status_rv == rv:
            return  # the same Deployment again (a re-list): its status is written
        if state is not None and state.dep_figures == (
            *deployment_figures(body),
            state.applied_generation,
        ):
            state.dep_status_rv = rv or None
            return  # a status change of the Deployment that ours does not show
        try:
            await self.write_status(None, body)
        except Exception as err:
            log.warning("status of %s/%s: %s", *key, err)
        else:
            if state is not None:
                state.dep_status_rv = rv

    async def on_service_event(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        """A Service deleted by hand is put back (a full reconcile re-applies it)."""
        meta = body.get("metadata") or {}
        name = (meta.get("labels") or {}).get(labels.SERVICE_LABEL)
        key = (str(meta.get("namespace")), str(name))
        if event_type == "DELETED" and name and key in self.states:
            self.states[key].seen_service = None
            self.schedule(key, 0.0)
        elif name and event_type != "DELETED":
            st = self.state(key)
            if st.resumed:
                st.seen_service = body


def covers(want: Any, have: Any) -> bool:
    """Whether ``have`` (an object as the API returned it, with its defaults) holds
    everything in ``want`` (what we render)."""
    if isinstance(want, Mapping):
        return isinstance(have, Mapping) and all(
            k in have and covers(v, have[k]) for k, v in want.items()
        )
    if isinstance(want, list):
        return (
            isinstance(have, list)
            and len(want) == len(have)
            and all(covers(w, h) for w, h in zip(want, have, strict=True))
        )
    return bool(want == have)


def without_template(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A Deployment manifest less its pod template: the template-hash annotation stands
    for it (the API server fills the template's defaults in, so it is not compared)."""
    spec = {k: v for k, v in (manifest.get("spec") or {}).items() if k != "template"}
    return {**manifest, "spec": spec}


def deployment_figures(dep: Mapping[str, Any]) -> tuple[int, int, int]:
    """What our status shows of a Deployment: (spec.replicas, replicas, readyReplicas)."""
    spec, status = dep.get("spec") or {}, dep.get("status") or {}
    return (
        int(spec.get("replicas") or 0),
        int(status.get("replicas") or 0),
        int(status.get("readyReplicas") or 0),
    )


def register(namespaces: Sequence[str] = ()) -> None:
    """Register the handlers with kopf's default registry (called by ``main`` with the
    watched namespaces: empty for all)."""

    @kopf.on.startup()
    async def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # Nothing of ours lives in kopf's progress/diff-base storage, but keep whatever
        # another handler might store in annotations: status is schema-pruned.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix="glowplug.dev"
        )
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="glowplug.dev"
        )
        settings.posting.level = logging.INFO
        settings.persistence.finalizer = FINALIZER
        # kopf waits this long after an event for more before handling the latest; its
        # 0.1 s default would be added to every wake.
        settings.batching.batch_window = 0.01
        # Connect and read timeouts on kopf's own calls and watches (its defaults wait
        # forever on a black-holed API server): watches end server-side after
        # server_timeout, and a client-side limit a little longer catches a silent one.
        settings.networking.connect_timeout = CONNECT_TIMEOUT
        settings.networking.request_timeout = READ_TIMEOUT
        settings.watching.connect_timeout = CONNECT_TIMEOUT
        settings.watching.server_timeout = int(2 * BOOKMARK_INTERVAL)  # timeoutSeconds: an int
        settings.watching.client_timeout = 2 * BOOKMARK_INTERVAL + 10
        api = await new_api_client("operator")
        memo.api = api
        memo.reconciler = Reconciler(Kube(api), namespaces=namespaces)

    @kopf.on.cleanup()
    async def cleanup(memo: kopf.Memo, **_: Any) -> None:
        api = getattr(memo, "api", None)
        if api is not None:
            await api.close()

    @kopf.on.event(GROUP, VERSION, PLURAL, id="glowplug-reconcile")
    async def embsvc_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.on_embsvc_event(type, body)

    @kopf.on.event(
        "apps",
        "v1",
        "deployments",
        labels={"app.kubernetes.io/managed-by": "glowplug"},
        id="glowplug-deployment-status",
    )
    async def deployment_event(
        type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any
    ) -> None:
        await memo.reconciler.on_deployment_event(type, body)

    @kopf.on.event(
        "",
        "v1",
        "services",
        labels={"app.kubernetes.io/managed-by": "glowplug"},
        id="glowplug-service-watch",
    )
    async def service_event(type: str | None, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
        await memo.reconciler.on_service_event(type, body)
