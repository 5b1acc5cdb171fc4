"""Serving engines: one module per engine (image, command line, port, probes, env, volumes)."""
