"""glowplug: scale-to-zero GPU embedding services on Kubernetes."""

__version__ = "0.1.0"
