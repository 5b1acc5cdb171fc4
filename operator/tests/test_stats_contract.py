"""The /stats contract: what the activator serves is what the autoscaler reads."""

from __future__ import annotations

import json

import pytest

from glowplug.kube.stats import ServiceStats, document, parse
from glowplug.operator.activity import parse_stats


def test_a_served_document_reads_back_through_json() -> None:
    sent = [
        ServiceStats("ns", "a", in_flight=2, queued=1, waking=True, last_request_finished=5.5),
        ServiceStats("ns", "b", first_response_after_wake=7.25),
    ]
    body = json.loads(json.dumps(document("act-0", sent)))
    assert set(body) == {"activator", "time", "services"}
    assert parse(body) == {s.key: s for s in sent}
    load = parse_stats(body)["ns/a"]
    assert (load.in_flight, load.queued, load.waking) == (2, 1, True)
    assert parse_stats(body)["ns/b"].first_response == 7.25


def test_a_malformed_entry_names_its_key() -> None:
    with pytest.raises(ValueError, match="ns/a"):
        parse({"services": {"ns/a": {"inFlight": "many"}}})
