"""GPU-seconds attributed to API keys: the split, residencies, counter deltas, and the
/stats field that carries the activators' per-key inputs to the operator."""

from __future__ import annotations

import pytest

from glowplug.kube.stats import ServiceStats, document, parse
from glowplug.operator.activity import Snapshot
from glowplug.operator.attribution import UNATTRIBUTED, Attribution, split


def test_split_is_proportional_and_sums_to_the_seconds() -> None:
    out = split(100.0, {"a": 3.0, "b": 1.0, "c": 0.0})
    assert out == {"a": 75.0, "b": 25.0}
    assert split(10.0, {}) == {UNATTRIBUTED: 10.0}
    assert split(0.0, {"a": 1.0}) == {}


def test_a_residency_is_split_by_its_inputs_and_the_wake_is_paid_by_its_waker() -> None:
    at = Attribution()
    assert at.advance(0.0, [("act1", {"t/a": 0})], held=False) == {}  # baseline reading
    # Key a's request wakes the service: 30 s of wake before anything is computed.
    assert at.advance(30.0, [("act1", {"t/a": 0})], held=True) == {}
    assert at.pending == 30.0
    # The first answer: a's 3 inputs; the wake and this tick go to a.
    assert at.advance(1.0, [("act1", {"t/a": 3})], held=True) == {"t/a": 31.0}
    # b computes 1 input on a second activator (first seen now: counts whole).
    out = at.advance(4.0, [("act1", {"t/a": 3}), ("act2", {"t/b": 1})], held=True)
    assert out == {"t/a": 3.0, "t/b": 1.0}
    # The idle tail: split 3:1 until the replica goes.
    assert at.advance(100.0, [("act1", {"t/a": 3}), ("act2", {"t/b": 1})], held=True) == {
        "t/a": 75.0,
        "t/b": 25.0,
    }
    assert at.advance(8.0, [("act1", {"t/a": 3}), ("act2", {"t/b": 1})], held=False) == {
        "t/a": 6.0,
        "t/b": 2.0,
    }
    # The next residency starts afresh: only b uses it.
    at.advance(10.0, [("act2", {"t/b": 1})], held=True)
    assert at.advance(5.0, [("act2", {"t/b": 2})], held=True) == {"t/b": 15.0}


def test_a_residency_nobody_used_is_unattributed() -> None:
    at = Attribution()
    at.advance(0.0, [("act1", {"t/a": 5})], held=False)
    assert at.advance(20.0, [("act1", {"t/a": 5})], held=True) == {}  # a pre-warm
    assert at.advance(10.0, [("act1", {"t/a": 5})], held=False) == {UNATTRIBUTED: 30.0}


def test_counters_restart_and_a_fresh_operator_only_takes_a_baseline() -> None:
    at = Attribution()
    at.advance(1.0, [("act1", {"t/a": 100})], held=True)  # baseline: 100 are old
    assert at.pending == 1.0
    assert at.advance(1.0, [("act1", {"t/a": 101})], held=True) == {"t/a": 2.0}
    # act1 restarted: its count began again at 2, both new.
    at.advance(0.0, [("act1", {"t/a": 101}), ("act2", {"t/b": 0})], held=True)
    out = at.advance(4.0, [("act1", {"t/a": 2}), ("act2", {"t/b": 1})], held=True)
    assert at.residency == {"t/a": 3.0, "t/b": 1.0}
    assert out == {"t/a": 3.0, "t/b": 1.0}


def test_nothing_is_exported_while_no_activator_has_keys() -> None:
    at = Attribution()
    assert at.advance(50.0, [], held=True) == {}
    assert at.advance(50.0, [], held=False) == {}
    assert not at.active and at.pending == 0.0
    # Keys in use but nothing computed yet: the first wake is held back for its waker.
    assert at.advance(0.0, [("act1", {})], held=False) == {}
    assert at.advance(2.0, [("act1", {})], held=True) == {} and at.pending == 2.0
    assert at.advance(1.0, [("act1", {"t/a": 1})], held=True) == {"t/a": 3.0}


def test_stats_carries_computed_inputs_per_key() -> None:
    body = document(
        "act-0",
        [
            ServiceStats("ns", "a", computed_inputs={"ns/k1": 4, "glowplug-system/k2": 1}),
            ServiceStats("ns", "b"),
        ],
    )
    assert "computedInputs" not in body["services"]["ns/b"]  # no API keys in use
    got = parse(body)
    assert got["ns/a"].computed_inputs == {"ns/k1": 4, "glowplug-system/k2": 1}
    assert got["ns/b"].computed_inputs is None
    keyed = document("act-0", [ServiceStats("ns", "c", computed_inputs={})])
    assert keyed["services"]["ns/c"]["computedInputs"] == {}  # keys in use, nothing yet
    assert parse(keyed)["ns/c"].computed_inputs == {}
    for bad in ({"k": -1}, {"k": "3"}, {"k": True}, ["k"]):
        body["services"]["ns/a"]["computedInputs"] = bad
        with pytest.raises(ValueError, match="computedInputs"):
            parse(body)


def test_snapshot_keeps_computed_inputs_apart_from_load() -> None:
    snap = Snapshot(0.0, {"ns/a": []}, 0, 1, {"ns/a": [("http://x", {"ns/k": 2})]})
    assert snap.computed["ns/a"] == [("http://x", {"ns/k": 2})]
    assert Snapshot(0.0, {}, 0, 1).computed == {}


async def test_a_keyed_activator_feeds_the_reader_full_and_changes_only() -> None:
    """A real activator with API keys, read by the operator's LoadReader over HTTP: the
    first read is full (``{}`` for a keyed service before any input), later ones are
    changes after a cursor, and each carries the per-key counts the split needs."""
    import aiohttp
    from activator_fakes import engines, harness, service_obj
    from test_activator_apikeys import KEY_A, KEY_B, OWN, secret

    from glowplug.activator.apikeys import KeyStore
    from glowplug.operator.activity import LoadReader, StaticDiscovery

    keys = KeyStore("required", OWN)
    keys.apply(secret("team-a", KEY_A))
    keys.apply(secret("team-b", KEY_B))
    async with harness(keys=keys) as h, engines(1) as (e,), aiohttp.ClientSession() as s:
        h.services.apply_service(service_obj())
        h.services.set_endpoints("ns1", "emb", [e.address])
        reader = LoadReader(StaticDiscovery([h.url]))
        try:
            snap = await reader.refresh()
            assert snap.computed == {"ns1/emb": [(h.url, {})]}  # keyed, nothing computed

            async def call(key: str, inputs: list[str]) -> None:
                async with s.post(
                    f"{h.url}/v1/embeddings",
                    json={"model": "emb", "input": inputs},
                    headers={"Authorization": f"Bearer {key}"},
                ) as r:
                    assert r.status == 200

            await call(KEY_A, ["a", "b", "c"])
            await call(KEY_B, ["d"])
            snap = await reader.refresh()  # changes after the first read's cursor
            assert snap.computed["ns1/emb"] == [
                (h.url, {"glowplug-system/team-a": 3, "glowplug-system/team-b": 1})
            ]
            at = Attribution()
            at.advance(0.0, [("x", {})], held=False)
            readings = snap.computed["ns1/emb"]
            assert at.advance(8.0, readings, held=True) == {
                "glowplug-system/team-a": 6.0,
                "glowplug-system/team-b": 2.0,
            }
        finally:
            await reader.close()
