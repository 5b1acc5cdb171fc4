"""The /stats contract: what the activator serves is what the autoscaler reads."""

from __future__ import annotations

import json

import pytest

from glowplug.kube.stats import (
    MAX_WAIT,
    ServiceStats,
    document,
    format_since,
    parse,
    parse_reply,
    parse_since,
    parse_wait,
)
from glowplug.operator.activity import parse_stats


def test_a_served_document_reads_back_through_json() -> None:
    sent = [
        ServiceStats("ns", "a", in_flight=2, queued=1, waking=True, last_request_finished=5.5),
        ServiceStats("ns", "b", first_response_after_wake=7.25),
    ]
    body = json.loads(json.dumps(document("act-0", sent)))
    assert set(body) == {"activator", "time", "epoch", "cursor", "full", "services"}
    assert parse(body) == {s.key: s for s in sent}
    load = parse_stats(body)["ns/a"]
    assert (load.in_flight, load.queued, load.waking) == (2, 1, True)
    assert parse_stats(body)["ns/b"].first_response == 7.25


def test_a_malformed_entry_names_its_key() -> None:
    with pytest.raises(ValueError, match="ns/a"):
        parse({"services": {"ns/a": {"inFlight": "many"}}})


def test_changes_after_a_cursor_read_back() -> None:
    sent = [ServiceStats("ns", "a", in_flight=1)]
    body = json.loads(json.dumps(document("act-0", sent, epoch="e1", cursor=7, full=False)))
    reply = parse_reply(body)
    assert (reply.epoch, reply.cursor, reply.full) == ("e1", 7, False)
    assert reply.services == {"ns/a": sent[0]}
    assert parse_reply(json.loads(json.dumps(document("act-0", [], epoch="e1")))).full


def test_a_producer_without_a_cursor_is_read_in_full_each_time() -> None:
    reply = parse_reply({"activator": "old", "time": 1.0, "services": {}})
    assert (reply.epoch, reply.full) == ("", True)


def test_since_and_wait_parameters() -> None:
    assert parse_since(format_since("abc", 12)) == ("abc", 12)
    for bad in (None, "", "abc", ":3", "abc:", "abc:-1", "abc:x"):
        assert parse_since(bad) is None, bad
    assert parse_wait("2.5") == 2.5
    assert parse_wait("1e9") == MAX_WAIT
    for bad in (None, "", "-3", "soon", "nan"):
        assert parse_wait(bad) == 0.0, bad


def test_a_malformed_cursor_names_the_field() -> None:
    with pytest.raises(ValueError, match="cursor"):
        parse_reply({"services": {}, "epoch": "e", "cursor": "7"})
