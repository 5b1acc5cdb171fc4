"""Serving engines: one module per engine (image, command line, port, probes, env, volumes).

Adding an engine: write ``glowplug/engines/<name>.py`` with an ``Engine`` subclass and an
``ENGINE`` instance, add it to ``REGISTRY`` below and its name to the CRD's
``spec.engine.name`` enum and ``glowplug.api.spec.ENGINES``.
"""

from __future__ import annotations

from glowplug.engines import sglang, tei, vllm
from glowplug.engines.base import Engine

REGISTRY: dict[str, Engine] = {
    sglang.ENGINE.name: sglang.ENGINE,
    tei.ENGINE.name: tei.ENGINE,
    vllm.ENGINE.name: vllm.ENGINE,
}


def get(name: str) -> Engine:
    """The engine for ``spec.engine.name``; KeyError names the known engines."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(sorted(REGISTRY))}") from None


__all__ = ["REGISTRY", "Engine", "get"]
