"""The EmbeddingService resource as typed Python, shared by operator and activator."""

from glowplug.api.durations import DurationError, format_duration, parse_duration
from glowplug.api.spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    EmbeddingService,
    SpecError,
    parse,
)

__all__ = [
    "API_VERSION",
    "GROUP",
    "KIND",
    "PLURAL",
    "VERSION",
    "DurationError",
    "EmbeddingService",
    "SpecError",
    "format_duration",
    "parse",
    "parse_duration",
]
