#!/usr/bin/env bash
# Put promtool (for `promtool check/test rules` on the chart's recording rules) into
# ~/.cache/glowplug/tools, without installing or starting a Prometheus server: the
# binary is extracted from Debian's `prometheus` package. A no-op when promtool is on
# PATH or already extracted. Prints the promtool path last.
set -euo pipefail
tools="${XDG_CACHE_HOME:-$HOME/.cache}/glowplug/tools"
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
if [[ -x "$tools/promtool" ]]; then echo "$tools/promtool"; exit 0; fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install-promtool: no apt-get here; install promtool (Prometheus) yourself" >&2
  exit 1
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [[ $(id -u) == 0 ]]; then apt-get update -qq >&2; fi
(cd "$work" && apt-get download prometheus >&2)
dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
mkdir -p "$tools"
install -m 0755 "$work/x/usr/bin/promtool" "$tools/promtool"
"$tools/promtool" --version >&2
echo "$tools/promtool"
