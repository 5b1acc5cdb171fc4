"""The OpenAI wire format: malformed requests over HTTP, and the pure helpers."""
# ruff: noqa: E501  (the malformed-request table reads best one request per line)

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from activator_fakes import Harness, harness, service_obj

from glowplug.activator import openai as oai
from glowplug.activator.server import Config
from glowplug.api import parse


@pytest.fixture
async def activator() -> AsyncIterator[Harness]:
    async with harness(Config(max_body_bytes=4096, max_inputs=4)) as h:
        h.services.apply_service(service_obj(model={"matryoshka": True, "dimensions": 64}))
        h.services.apply_service(service_obj("plain", served="plain"))
        yield h


J = "application/json"
# (method, path, content type, body, status, words the message must contain)
MALFORMED: list[tuple[str, str, str | None, bytes, int, tuple[str, ...]]] = [
    ("POST", "/v1/embeddings", J, b"{not json", 400, ("not valid JSON",)),
    ("POST", "/v1/embeddings", J, b"", 400, ("empty",)),
    ("POST", "/v1/embeddings", J, b"[1, 2]", 400, ("JSON object", "array")),
    ("POST", "/v1/embeddings", J, b'"text"', 400, ("JSON object", "string")),
    ("POST", "/v1/embeddings", J, b'{"input": "x"}', 400, ("'model'", "required")),
    ("POST", "/v1/embeddings", J, b'{"model": 5, "input": "x"}', 400, ("'model'", "integer")),
    ("POST", "/v1/embeddings", J, b'{"model": "", "input": "x"}', 400, ("'model'", "empty")),
    ("POST", "/v1/embeddings", J, b'{"model": "emb"}', 400, ("'input'", "required")),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": ""}', 400, ("'input'", "empty")),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": []}', 400, ("'input'", "empty")),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": 5}', 400, ("'input'", "integer")),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": {"a": 1}}', 400, ("'input'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": ["a", 3]}', 400, ("'input[1]'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": ["a", ""]}', 400, ("'input[1]'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": " \\n\\t "}', 400, ("'input'", "whitespace")),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": ["a", "b", "  "]}', 400, ("'input[2]'", "whitespace")),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": [1, -2]}', 400, ("'input[1]'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": [[1], ["x"]]}', 400, ("input[1][0]",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": [[1], []]}', 400, ("'input[1]'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": [null]}', 400, ("'input[0]'",)),
    ("POST", "/v1/embeddings", J, b'{"model":"emb","input":["a","b","c","d","e"]}', 400, ("at most 4",)),
    (
        "POST", "/v1/embeddings", J, b'{"model": "emb", "input": "x", "encoding_format": "int8"}',
        400, ("'encoding_format'", "int8"),
    ),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": "x", "dimensions": "8"}', 400, ("'dimensions'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": "x", "dimensions": 0}', 400, ("'dimensions'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": "x", "dimensions": true}', 400, ("'dimensions'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": "x", "dimensions": 9999}', 400, ("out of range",)),
    ("POST", "/v1/embeddings", J, b'{"model": "plain", "input": "x", "dimensions": 8}', 400, ("Matryoshka",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": "x", "user": 1}', 400, ("'user'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": "x", "input_type": "q"}', 400, ("'input_type'",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": [1, 2], "input_type": "query"}', 400, ("token ids",)),
    ("POST", "/v1/embeddings", J, b'{"model": "nope", "input": "x"}', 404, ("'nope'", "does not exist")),
    ("POST", "/v1/embeddings", J, b'{"model": "other/emb", "input": "x"}', 404, ("'other/emb'",)),
    ("POST", "/v1/embeddings", "text/plain", b'{"model": "emb", "input": "x"}', 415, ("text/plain",)),
    ("POST", "/v1/embeddings", "application/x-www-form-urlencoded", b"model=emb", 415, ("application/json",)),
    ("GET", "/v1/embeddings", None, b"", 405, ("GET", "POST")),
    ("PUT", "/v1/embeddings", J, b"{}", 405, ("PUT",)),
    ("POST", "/v1/embeddings", J, b'{"model": "emb", "input": "' + b"x" * 5000 + b'"}', 413, ("4096",)),
    ("POST", "/v1/nothing", J, b"{}", 404, ("/v1/nothing",)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("method", "path", "ctype", "body", "status", "words"),
    MALFORMED,
    ids=[f"{i:02d}-{m[4]}" for i, m in enumerate(MALFORMED)],
)
async def test_malformed_requests(
    activator: Harness,
    method: str,
    path: str,
    ctype: str | None,
    body: bytes,
    status: int,
    words: tuple[str, ...],
) -> None:
    headers = {"Content-Type": ctype} if ctype else {}
    async with (
        aiohttp.ClientSession(skip_auto_headers=("Content-Type",)) as s,
        s.request(method, f"{activator.url}{path}", data=body, headers=headers) as resp,
    ):
        assert resp.status == status
        doc = json.loads(await resp.read())
    err = doc["error"]
    assert set(err) == {"message", "type", "param", "code"}
    for w in words:
        assert w in err["message"], err
    if status == 405:
        assert resp.headers["Allow"] == "POST"


def test_malformed_table_is_big_enough() -> None:
    assert len(MALFORMED) >= 20


def test_base64_roundtrip_is_float32_little_endian() -> None:
    import struct

    values = [0.1, -2.5, 3.0e-8, 1234.5678]
    text = oai.floats_to_base64(values)
    import base64

    raw = base64.b64decode(text)
    assert struct.unpack("<4f", raw) == tuple(struct.unpack("<4f", struct.pack("<4f", *values)))
    assert oai.base64_to_floats(text) == list(struct.unpack("<4f", raw))


def test_rewrite_response_model_and_base64() -> None:
    engine = {"object": "list", "model": "/models/x", "data": [{"index": 0, "embedding": [1.5]}]}
    out = json.loads(oai.rewrite_response(json.dumps(engine).encode(), "small", "float"))
    assert out["model"] == "small" and out["data"][0]["embedding"] == [1.5]
    out = json.loads(oai.rewrite_response(json.dumps(engine).encode(), "small", "base64"))
    assert oai.base64_to_floats(out["data"][0]["embedding"]) == [1.5]
    with pytest.raises(oai.UpstreamFormatError):
        oai.rewrite_response(b"<html>", "small", "float")


def _svc(**model: Any) -> Any:
    return parse(service_obj(model=model))


def test_upstream_body_unchanged_when_nothing_to_do() -> None:
    body = b'{"model": "emb", "input": "x"}'
    req = oai.parse_request(body, max_inputs=10)
    assert oai.upstream_body(req, _svc(), body) is body


def test_upstream_body_query_instruction() -> None:
    svc = _svc(queryInstruction="Retrieve passages")
    body = json.dumps({"model": "ns1/emb", "input": "what?", "input_type": "query"}).encode()
    req = oai.parse_request(body, max_inputs=10)
    sent = json.loads(oai.upstream_body(req, svc, body))
    assert sent == {"model": "emb", "input": "Instruct: Retrieve passages\nQuery:what?"}
    # no instruction configured: queries go as they are
    sent = json.loads(oai.upstream_body(req, _svc(), body))
    assert sent == {"model": "emb", "input": "what?"}


def test_token_id_inputs_are_counted() -> None:
    assert oai.parse_request(b'{"model":"m","input":[1,2,3]}', max_inputs=2).n_inputs == 1
    assert oai.parse_request(b'{"model":"m","input":[[1],[2]]}', max_inputs=2).n_inputs == 2
    assert not oai.parse_request(b'{"model":"m","input":[[1]]}', max_inputs=2).text_inputs


def test_rewrite_fast_path_matches_full_parse() -> None:
    engine = {
        "object": "list",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.25, -1.5]}],
        "model": '/models/we"ird\\path',
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    for sep in ((",", ":"), (", ", ": ")):
        body = json.dumps(engine, separators=sep).encode()
        out = json.loads(oai.rewrite_response(body, 'se"rved', "float"))
        assert out == {**engine, "model": 'se"rved'}
    # no model field at all: added by the full parse
    out = json.loads(oai.rewrite_response(b'{"object": "list", "data": []}', "m", "float"))
    assert out == {"object": "list", "data": [], "model": "m"}
    # base64 already done by the engine passes through untouched
    body = json.dumps({**engine, "data": [{"index": 0, "embedding": "AACAPg=="}]}).encode()
    out = json.loads(oai.rewrite_response(body, "m", "base64"))
    assert out["data"][0]["embedding"] == "AACAPg==" and out["model"] == "m"


def _req(inputs: Any, **extra: Any) -> Any:
    return oai.parse_request(
        json.dumps({"model": "emb", "input": inputs, **extra}).encode(), max_inputs=2048
    )


def test_upstream_bodies_split_by_the_engine_batch_limit() -> None:
    inputs = [f"item-{i}" for i in range(70)]
    req = _req(inputs, encoding_format="base64", input_type="query")
    svc = _svc(queryInstruction="find")
    body = json.dumps(req.raw).encode()
    parts = [json.loads(b) for b in oai.upstream_bodies(req, svc, body, 32)]
    assert [len(p["input"]) for p in parts] == [32, 32, 6]
    assert [x.split("Query:")[1] for p in parts for x in p["input"]] == inputs
    for p in parts:
        assert p["encoding_format"] == "base64" and "input_type" not in p
    # At or under the limit, or without one: one body, the client's bytes when possible.
    small = _req(inputs[:32])
    raw = json.dumps(small.raw).encode()
    assert oai.upstream_bodies(small, _svc(), raw, 32) == [raw]
    assert oai.upstream_bodies(_req(inputs), _svc(), raw, None) == [raw]
    # A single token-id array is one input however long it is.
    tokens = _req(list(range(100)))
    assert len(oai.upstream_bodies(tokens, _svc(), b"x", 32)) == 1


def test_merge_responses_renumbers_in_order_and_sums_usage() -> None:
    def answer(n: int, first: int) -> bytes:
        # An engine may list items out of order: merge sorts by index.
        data = [{"object": "embedding", "index": i, "embedding": [first + i]} for i in range(n)]
        return json.dumps(
            {
                "object": "list",
                "model": "/m",
                "data": data[::-1],
                "usage": {"prompt_tokens": 2 * n, "total_tokens": 2 * n},
            }
        ).encode()

    merged = json.loads(oai.merge_responses([answer(3, 0), answer(3, 3), answer(1, 6)], 3))
    assert [d["index"] for d in merged["data"]] == list(range(7))
    assert [d["embedding"] for d in merged["data"]] == [[i] for i in range(7)]
    assert merged["usage"] == {"prompt_tokens": 14, "total_tokens": 14}
    assert merged["object"] == "list"
    with pytest.raises(oai.UpstreamFormatError):
        oai.merge_responses([answer(3, 0), b"<html>"], 3)
