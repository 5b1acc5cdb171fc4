"""The OpenAI embeddings wire format: request validation, errors, and response rewriting.

Pure functions, no I/O: the server calls ``parse_request`` on the body, the forwarder
sends what ``upstream_body`` returns, and ``rewrite_response`` turns the engine's answer
into what the client asked for (served model name, base64 when requested).
"""

from __future__ import annotations

import base64
import json
import re
import sys
from array import array
from dataclasses import dataclass
from typing import Any

from glowplug.api import EmbeddingService

ENCODINGS = ("float", "base64")
INPUT_TYPES = ("query", "document")


class APIError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, param=self.param, code=self.code)


def error_body(
    message: str, *, type: str, param: str | None = None, code: str | None = None
) -> bytes:
    return json.dumps(
        {"error": {"message": message, "type": type, "param": param, "code": code}}
    ).encode()


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


@dataclass(frozen=True)
class EmbeddingRequest:
    """A validated embeddings request."""

    raw: dict[str, Any]  # the decoded body, as sent
    model: str
    n_inputs: int
    text_inputs: bool  # strings (True) or token ids (False)
    encoding_format: str  # "float" | "base64"
    dimensions: int | None
    input_type: str | None


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "integer", float: "number", str: "string"}.get(
        type(value), "array" if isinstance(value, list) else "object"
    )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_input(value: Any, max_inputs: int) -> tuple[int, bool]:
    """Return (number of inputs, inputs are text); raise naming the bad element."""
    if isinstance(value, str):
        if not value.strip():
            # Engines refuse these too (SGLang: "Input at index 0 cannot be empty or
            # whitespace only"); refusing here spares the engine, and a wake.
            raise bad_request(
                "'input' must not be empty or whitespace only", "input", "empty_input"
            )
        return 1, True
    if not isinstance(value, list):
        raise bad_request(
            f"'input' must be a string, an array of strings, an array of token ids or an"
            f" array of token-id arrays, got {_type_name(value)}",
            "input",
            "invalid_type",
        )
    if not value:
        raise bad_request("'input' must not be an empty array", "input", "empty_input")
    first = value[0]
    if _is_int(first):
        # One token-id array: counts as one input.
        for i, tok in enumerate(value):
            if not _is_int(tok) or tok < 0:
                raise bad_request(
                    f"'input[{i}]' must be a non-negative integer token id (the array holds"
                    f" token ids), got {_type_name(tok)}",
                    f"input[{i}]",
                    "invalid_type",
                )
        return 1, False
    if len(value) > max_inputs:
        raise bad_request(
            f"'input' holds {len(value)} items; at most {max_inputs} are allowed per request",
            "input",
            "too_many_inputs",
        )
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise bad_request(
                    f"'input[{i}]' must be a string (the array holds strings), got"
                    f" {_type_name(item)}",
                    f"input[{i}]",
                    "invalid_type",
                )
            if not item.strip():
                raise bad_request(
                    f"'input[{i}]' must not be empty or whitespace only",
                    f"input[{i}]",
                    "empty_input",
                )
        return len(value), True
    if isinstance(first, list):
        for i, item in enumerate(value):
            if not isinstance(item, list) or not item:
                raise bad_request(
                    f"'input[{i}]' must be a non-empty array of token ids, got"
                    f" {'an empty array' if item == [] else _type_name(item)}",
                    f"input[{i}]",
                    "invalid_type",
                )
            for j, tok in enumerate(item):
                if not _is_int(tok) or tok < 0:
                    raise bad_request(
                        f"'input[{i}][{j}]' must be a non-negative integer token id, got"
                        f" {_type_name(tok)}",
                        f"input[{i}][{j}]",
                        "invalid_type",
                    )
        return len(value), False
    raise bad_request(
        f"'input[0]' must be a string, a token id or an array of token ids, got"
        f" {_type_name(first)}",
        "input[0]",
        "invalid_type",
    )


def parse_request(body: bytes, *, max_inputs: int) -> EmbeddingRequest:
    """Decode and validate an embeddings request body; raise ``APIError`` (400) naming the field."""
    if not body.strip():
        raise bad_request("request body is empty; expected a JSON object", None, "empty_body")
    try:
        raw = json.loads(body)
    except (ValueError, UnicodeDecodeError) as err:
        raise bad_request(f"request body is not valid JSON: {err}", None, "invalid_json") from None
    if not isinstance(raw, dict):
        raise bad_request(
            f"request body must be a JSON object, got {_type_name(raw)}", None, "invalid_json"
        )
    model = raw.get("model")
    if model is None:
        raise bad_request("'model' is required", "model", "missing_required_parameter")
    if not isinstance(model, str):
        raise bad_request(
            f"'model' must be a string, got {_type_name(model)}", "model", "invalid_type"
        )
    if not model:
        raise bad_request("'model' must not be empty", "model", "missing_required_parameter")
    if "input" not in raw:
        raise bad_request("'input' is required", "input", "missing_required_parameter")
    n_inputs, text = _check_input(raw["input"], max_inputs)

    encoding = raw.get("encoding_format")
    if encoding is None:
        encoding = "float"
    elif encoding not in ENCODINGS:
        raise bad_request(
            f"'encoding_format' must be one of {', '.join(ENCODINGS)}, got {encoding!r}",
            "encoding_format",
        )
    dims = raw.get("dimensions")
    if dims is not None and (not _is_int(dims) or dims < 1):
        raise bad_request(
            f"'dimensions' must be a positive integer, got {dims!r}", "dimensions", "invalid_type"
        )
    user = raw.get("user")
    if user is not None and not isinstance(user, str):
        raise bad_request(
            f"'user' must be a string, got {_type_name(user)}", "user", "invalid_type"
        )
    input_type = raw.get("input_type")
    if input_type is not None:
        if input_type not in INPUT_TYPES:
            raise bad_request(
                f"'input_type' must be one of {', '.join(INPUT_TYPES)}, got {input_type!r}",
                "input_type",
            )
        if input_type == "query" and not text:
            raise bad_request(
                "'input_type': 'query' needs text input (the instruction cannot be added to"
                " token ids)",
                "input_type",
            )
    return EmbeddingRequest(
        raw=raw,
        model=model,
        n_inputs=n_inputs,
        text_inputs=text,
        encoding_format=encoding,
        dimensions=dims,
        input_type=input_type,
    )


def check_dimensions(req: EmbeddingRequest, svc: EmbeddingService) -> None:
    """Refuse ``dimensions`` the service cannot honour (not Matryoshka, or out of range)."""
    if req.dimensions is None:
        return
    m = svc.model
    if not m.matryoshka:
        raise bad_request(
            f"model {m.served_name!r} does not support 'dimensions' (it is not a Matryoshka"
            f" model; spec.model.matryoshka is false)",
            "dimensions",
            "dimensions_not_supported",
        )
    upper = m.dimensions
    if req.dimensions < m.min_dimensions or (upper is not None and req.dimensions > upper):
        bound = f"[{m.min_dimensions}, {upper}]" if upper is not None else f">= {m.min_dimensions}"
        raise bad_request(
            f"'dimensions' {req.dimensions} is out of range for model {m.served_name!r}:"
            f" must be in {bound}",
            "dimensions",
            "dimensions_out_of_range",
        )


def format_query(instruction: str, query: str) -> str:
    """Qwen3-Embedding's query form (no space after ``Query:``)."""
    return f"Instruct: {instruction}\nQuery:{query}"


def upstream_body(req: EmbeddingRequest, svc: EmbeddingService, body: bytes) -> bytes:
    """The body to send to the engine: the client's bytes unless something must change.

    Changes: ``model`` becomes the served name (clients may have used ``namespace/name``),
    ``input_type`` is stripped (engines do not know it) and, for queries, the service's
    ``queryInstruction`` is applied to every input.
    """
    served = svc.model.served_name
    if req.model == served and req.input_type is None:
        return body
    out = {k: v for k, v in req.raw.items() if k != "input_type"}
    out["model"] = served
    instruction = svc.model.query_instruction
    if req.input_type == "query" and instruction:
        inp = out["input"]
        if isinstance(inp, str):
            out["input"] = format_query(instruction, inp)
        else:
            out["input"] = [format_query(instruction, s) for s in inp]
    return json.dumps(out, ensure_ascii=False).encode()


def upstream_bodies(
    req: EmbeddingRequest, svc: EmbeddingService, body: bytes, max_batch: int | None
) -> list[bytes]:
    """The bodies to send: one, or one per ``max_batch`` inputs when the engine's batch
    limit (TEI: --max-client-batch-size, 32 by default) is smaller than the request.

    Splitting keeps OpenAI's limit (2048 inputs) for clients; ``merge_responses`` puts the
    answers back together in input order.
    """
    if max_batch is None or req.n_inputs <= max_batch or not isinstance(req.raw["input"], list):
        return [upstream_body(req, svc, body)]
    inputs = req.raw["input"]
    bodies = []
    for start in range(0, len(inputs), max_batch):
        part = dict(req.raw, input=inputs[start : start + max_batch])
        chunk = EmbeddingRequest(
            raw=part,
            model=req.model,
            n_inputs=len(part["input"]),
            text_inputs=req.text_inputs,
            encoding_format=req.encoding_format,
            dimensions=req.dimensions,
            input_type=req.input_type,
        )
        raw = json.dumps(part, ensure_ascii=False).encode()
        bodies.append(upstream_body(chunk, svc, raw))
    return bodies


def merge_responses(bodies: list[bytes], batch: int) -> bytes:
    """One embeddings response from the answers to consecutive ``batch``-sized chunks:
    ``data`` in input order with indexes renumbered, ``usage`` summed."""
    merged: dict[str, Any] = {}
    data: list[Any] = []
    usage: dict[str, int] = {}
    for n, body in enumerate(bodies):
        try:
            doc = json.loads(body)
            items = doc["data"]
            items.sort(key=lambda item: item["index"])
        except (ValueError, KeyError, TypeError) as err:
            raise UpstreamFormatError(f"engine response is not an embeddings list: {err}") from None
        for item in items:
            item["index"] += n * batch
        data.extend(items)
        for key, value in (doc.get("usage") or {}).items():
            if isinstance(value, int) and not isinstance(value, bool):
                usage[key] = usage.get(key, 0) + value
        if not merged:
            merged = doc
    merged["data"] = data
    if usage:
        merged["usage"] = usage
    return json.dumps(merged, separators=(",", ":")).encode()


def floats_to_base64(values: list[float]) -> str:
    """Little-endian float32 bytes, base64-encoded: what the OpenAI SDK decodes."""
    arr = array("f", values)
    if sys.byteorder != "little":
        arr.byteswap()
    return base64.b64encode(arr.tobytes()).decode("ascii")


def base64_to_floats(text: str) -> list[float]:
    arr = array("f")
    arr.frombytes(base64.b64decode(text))
    if sys.byteorder != "little":
        arr.byteswap()
    return arr.tolist()


class UpstreamFormatError(Exception):
    """The engine answered 200 with a body that is not an embeddings response."""


_MODEL_VALUE = re.compile(rb'"model"\s*:\s*"(?:[^"\\]|\\.)*"')
_FLOAT_EMBEDDING = re.compile(rb'"embedding"\s*:\s*\[')


def rewrite_response(body: bytes, served_name: str, encoding_format: str) -> bytes:
    """Rewrite ``model`` to the served name and honour ``encoding_format: base64``.

    SGLang reports the model path as ``model``; older engines ignore ``encoding_format``
    and return floats, so floats are converted here when the client asked for base64, and
    strings the engine already encoded pass through.

    Fast path: when nothing but ``model`` must change, the field is replaced in the bytes
    (embeddings responses hold no other string that could contain it), sparing a JSON
    decode and encode of every vector. Anything unusual takes the full parse.
    """
    if encoding_format == "float" or not _FLOAT_EMBEDDING.search(body):
        i = body.find(b'"model"')
        if i > 0 and body.rfind(b'"model"') == i and body.lstrip()[:1] == b"{":
            m = _MODEL_VALUE.match(body, i)
            if m is not None and b'"data"' in body:
                name = json.dumps(served_name).encode()
                return b"".join((body[: m.start()], b'"model":', name, body[m.end() :]))
    try:
        doc = json.loads(body)
        data = doc["data"]
    except (ValueError, KeyError, TypeError) as err:
        raise UpstreamFormatError(f"engine response is not an embeddings list: {err}") from None
    doc["model"] = served_name
    if encoding_format == "base64":
        for item in data:
            emb = item.get("embedding") if isinstance(item, dict) else None
            if isinstance(emb, list):
                item["embedding"] = floats_to_base64(emb)
    return json.dumps(doc, separators=(",", ":")).encode()
