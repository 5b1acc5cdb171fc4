"""GET /v1/models: cached, and every change shows on the next call.

The reference is the listing built from scratch (what the activator did on every call
before the cache): after each of a few hundred random changes the cached body must equal
it, so no kind of change can be missed.
"""

from __future__ import annotations

import json
import random
from typing import Any

import aiohttp
from activator_fakes import harness, service_obj

from glowplug.activator.apikeys import parse_secret
from glowplug.activator.metrics import Metrics
from glowplug.activator.openai import APIError
from glowplug.activator.services import Services


def from_scratch(services: Services, key: Any = None) -> dict[str, Any]:
    """The listing as the uncached code built it."""
    table = services.table
    data = []
    for svc in table:
        if key is not None and not key.allows(svc):
            continue
        short = svc.model.served_name
        try:
            unique = table.resolve(short) is svc
        except APIError:
            unique = False
        route = services.routes.get(f"{svc.namespace}/{svc.name}")
        data.append(
            {
                "id": short if unique else svc.key,
                "object": "model",
                "created": 0,
                "owned_by": svc.namespace,
                "glowplug": {
                    "namespace": svc.namespace,
                    "name": svc.name,
                    "servedName": short,
                    "unambiguousName": svc.key,
                    "model": svc.model.id,
                    "matryoshka": svc.model.matryoshka,
                    "dimensions": svc.model.dimensions,
                    "ready": bool(route and route.state.has_ready),
                },
            }
        )
    return {"object": "list", "data": data}


def listing(services: Services, key: Any = None) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(services.models.body(key))
    return doc


def ids(services: Services) -> list[str]:
    return [d["id"] for d in listing(services)["data"]]


def test_added_changed_removed_and_ready_show_on_the_next_call() -> None:
    s = Services(Metrics())
    assert listing(s) == {"object": "list", "data": []}
    s.apply_service(service_obj("a", "ns1", served="emb"))
    assert ids(s) == ["emb"]
    builds = s.models.builds
    assert ids(s) == ["emb"] and s.models.builds == builds  # unchanged: cached
    # A status-only update (the operator writes status often) keeps the cache.
    s.apply_service({**service_obj("a", "ns1", served="emb"), "status": {"replicas": 0}})
    assert ids(s) == ["emb"] and s.models.builds == builds
    # The same short name in another namespace: both become ambiguous.
    s.apply_service(service_obj("b", "ns2", served="emb"))
    assert ids(s) == ["ns1/emb", "ns2/emb"]
    # A changed spec: servedName frees "emb" for the other service.
    s.apply_service(service_obj("b", "ns2", served="other"))
    assert ids(s) == ["emb", "other"]
    s.apply_service(service_obj("b", "ns2", served="other", model={"dimensions": 256}))
    assert listing(s)["data"][1]["glowplug"]["dimensions"] == 256
    # Ready when an endpoint appears, not when it goes.
    s.set_endpoints("ns2", "b", ["127.0.0.1:9"])
    assert [d["glowplug"]["ready"] for d in listing(s)["data"]] == [False, True]
    s.set_endpoints("ns2", "b", [])
    assert [d["glowplug"]["ready"] for d in listing(s)["data"]] == [False, False]
    s.delete_service(service_obj("a", "ns1"))
    assert ids(s) == ["other"]
    assert listing(s) == from_scratch(s)


def test_a_key_lists_what_it_may_call_and_a_changed_secret_shows() -> None:
    s = Services(Metrics())
    for ns, name in (("team-a", "x"), ("team-a", "y"), ("team-b", "x")):
        s.apply_service(service_obj(name, ns))

    def secret(models: str) -> Any:
        data = {"key": "a-test-key-of-32-characters-long", "models": models}
        return parse_secret(
            {"metadata": {"name": "k", "namespace": "team-a"}, "stringData": data}, None
        )

    k1 = secret("x")
    assert [d["glowplug"]["name"] for d in listing(s, k1)["data"]] == ["x"]
    assert listing(s, k1) == from_scratch(s, k1)
    k2 = secret("x,y")  # the Secret was edited: a new key object
    assert [d["glowplug"]["name"] for d in listing(s, k2)["data"]] == ["x", "y"]
    assert len(listing(s)["data"]) == 3  # without a key: every model


def test_random_changes_always_match_a_listing_from_scratch() -> None:
    rng = random.Random(12)
    s = Services(Metrics())
    names = [f"s{i}" for i in range(12)]
    namespaces = ["a", "a-b", "b"]  # "a-b/..." sorts before "a/..." as text, not as pairs
    served = ["emb", "small", "a/emb", None]  # "a/emb" is also service emb's full key
    for step in range(400):
        ns, name = rng.choice(namespaces), rng.choice(names)
        op = rng.random()
        if op < 0.5:
            model = {"dimensions": rng.choice([None, 256, 512])}
            s.apply_service(service_obj(name, ns, served=rng.choice(served), model=model))
        elif op < 0.7:
            s.delete_service(service_obj(name, ns))
        elif f"{ns}/{name}" in s.routes:
            s.set_endpoints(ns, name, rng.choice([[], ["127.0.0.1:9"]]))
        if rng.random() < 0.5:  # calls between changes, and several changes per call
            assert listing(s) == from_scratch(s), f"step {step}"
    assert listing(s) == from_scratch(s)


async def test_over_http_the_listing_follows_changes() -> None:
    async with harness() as h, aiohttp.ClientSession() as session:

        async def get() -> list[str]:
            async with session.get(f"{h.url}/v1/models") as r:
                assert r.status == 200
                return [d["id"] for d in (await r.json())["data"]]

        h.services.apply_service(service_obj("one", served="first"))
        assert await get() == ["first"]
        h.services.apply_service(service_obj("two", served="second"))
        assert await get() == ["first", "second"]
        h.services.delete_service(service_obj("one"))
        assert await get() == ["second"]
