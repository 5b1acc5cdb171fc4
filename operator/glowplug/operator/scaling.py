"""Autoscaling, wake-failure detection and the GPU-hour ledger, registered with kopf.

Placeholder until the autoscaler lands: ``glowplug.operator.main`` calls these hooks.
"""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the autoscaler's command-line options to ``glowplug operator``."""


def configure(args: argparse.Namespace) -> None:
    """Apply the parsed options and register the autoscaler's kopf handlers."""
