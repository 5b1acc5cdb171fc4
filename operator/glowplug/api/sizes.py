"""Byte sizes as the CRD writes them: ``65536``, ``64Ki``, ``256Mi``, ``1Gi``.

The same grammar is enforced by the CRD's CEL rule (``SIZE_REGEX``), so a value the API
server accepted always parses here.
"""

from __future__ import annotations

import re

SIZE_REGEX = r"^[1-9][0-9]*(Ki|Mi|Gi)?$"
_FULL = re.compile(SIZE_REGEX)
_SUFFIX = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}


class SizeError(ValueError):
    """A string that is not a positive byte size like ``64Mi``."""


def parse_size(text: str) -> int:
    """Return the size in bytes."""
    m = _FULL.match(text) if isinstance(text, str) else None
    if m is None:
        raise SizeError(
            f"{text!r} is not a size: use a positive whole number of bytes, optionally with"
            " Ki, Mi or Gi, e.g. 65536, 64Mi, 1Gi"
        )
    suffix = m.group(1) or ""
    return int(text[: len(text) - len(suffix)]) * _SUFFIX[suffix]
