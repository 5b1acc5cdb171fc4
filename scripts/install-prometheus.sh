#!/usr/bin/env bash
# Put a real Prometheus server (for the end-to-end check of the dashboard's queries and
# the recording rules) into ~/.cache/glowplug/tools/prometheus-<version>/, without
# installing or starting a system service: the binary is extracted from Debian's
# `prometheus` package (the same package scripts/install-promtool.sh takes promtool
# from). A no-op when already extracted. Prints the prometheus path last.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/glowplug/tools"
if ! command -v apt-get >/dev/null 2>&1; then
  if command -v prometheus >/dev/null 2>&1; then command -v prometheus; exit 0; fi
  echo "install-prometheus: no apt-get here; install prometheus yourself" >&2
  exit 1
fi
version="$(apt-cache policy prometheus 2>/dev/null | awk '/Candidate:/ {print $2}')"
if [[ -z "$version" || "$version" == "(none)" ]]; then
  if [[ $(id -u) == 0 ]]; then apt-get update -qq >&2; fi
  version="$(apt-cache policy prometheus | awk '/Candidate:/ {print $2}')"
fi
dir="$cache/prometheus-${version//[:~+]/_}"
if [[ -x "$dir/prometheus" ]]; then echo "$dir/prometheus"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install-prometheus: extracting prometheus $version from Debian's package" >&2
(cd "$work" && apt-get download prometheus >&2 2>/dev/null) || {
  if [[ $(id -u) == 0 ]]; then apt-get update -qq >&2; fi
  (cd "$work" && apt-get download prometheus >&2)
}
dpkg-deb -x "$work"/prometheus_*.deb "$work/x"
mkdir -p "$dir"
install -m 0755 "$work/x/usr/bin/prometheus" "$dir/prometheus"
"$dir/prometheus" --version >&2
echo "$dir/prometheus"
