"""Stand-ins (test doubles) for engine images: see sglang.py. Not the real engines."""
