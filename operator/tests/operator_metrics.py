"""Reading the operator's /metrics as Prometheus would: its exposition, parsed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def scrape(name: str, labels: dict[str, str]) -> float | None:
    """One sample of ``servicemetrics.exposition()`` (None where it is not exported)."""
    from glowplug.operator.servicemetrics import exposition

    for family in text_string_to_metric_families(exposition().decode()):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None
