"""Request-body shape limits the JSON parser does not enforce by itself.

An embeddings request nests at most three levels (``{"input": [[1, 2], [3]]}``) and
holds at most one array per input. A body nested thousands deep makes ``json.loads``
recurse until ``RecursionError`` (a 500 and a traceback before this check); one made of
millions of empty arrays costs seconds of event loop in ``json.loads`` (3.8 s for 8 MiB
of ``[],``, measured). ``check_json_shape`` rejects both first, at C speed: a body with
few brackets passes at once; otherwise the brackets outside strings are kept
(``re.sub`` and ``bytes.translate``), counted, searched for a run of openers deeper than
the limit, and innermost pairs removed one level per pass (``bytes.replace``).
"""

from __future__ import annotations

import re

MAX_JSON_DEPTH = 32

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class BadShape(ValueError):
    """The body nests too deep or holds too many arrays and objects."""


def check_json_shape(body: bytes, *, max_containers: int, max_depth: int = MAX_JSON_DEPTH) -> None:
    """Raise ``BadShape`` if ``body`` nests deeper than ``max_depth`` or holds more than
    ``max_containers`` arrays and objects. Malformed JSON is left to the JSON parser."""
    if body.count(b"[") + body.count(b"{") <= max_depth:
        return
    brackets = _STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    if len(brackets) > 2 * max_containers:
        raise BadShape(
            f"request body holds {len(brackets) // 2} arrays and objects, more than the"
            f" {max_containers} an embeddings request can need"
        )
    deep = re.compile(rb"[\[{]{%d}" % (max_depth + 1))
    for _ in range(max_depth):
        if deep.search(brackets):
            break
        shorter = brackets.replace(b"[]", b"").replace(b"{}", b"")
        if len(shorter) == len(brackets):
            break  # nothing closes: unbalanced, judged below
        brackets = shorter
    if brackets:
        raise BadShape(
            f"request body nests deeper than {max_depth} levels, or its brackets do not balance"
        )
