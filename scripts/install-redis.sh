#!/usr/bin/env bash
# Put a real redis-server (for the activator's shared-cache tests) into
# ~/.cache/glowplug/tools/redis-<version>, without installing or starting a system
# service: the binaries and the two libraries they need are extracted from Debian's
# packages (redis-tools ships the server binary, redis-server only a symlink and the
# init scripts). A no-op when already extracted. Prints the redis-server path last.
set -euo pipefail
cache="${XDG_CACHE_HOME:-$HOME/.cache}/glowplug/tools"
if ! command -v apt-get >/dev/null 2>&1; then
  if command -v redis-server >/dev/null 2>&1; then command -v redis-server; exit 0; fi
  echo "install-redis: no apt-get here; install redis-server yourself" >&2
  exit 1
fi
version="$(apt-cache policy redis-tools 2>/dev/null | awk '/Candidate:/ {print $2}')"
if [[ -z "$version" || "$version" == "(none)" ]]; then
  if [[ $(id -u) == 0 ]]; then apt-get update -qq >&2; fi
  version="$(apt-cache policy redis-tools | awk '/Candidate:/ {print $2}')"
fi
dir="$cache/redis-${version//[:~]/_}"
if [[ -x "$dir/redis-server" ]]; then echo "$dir/redis-server"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
echo "install-redis: extracting redis-tools $version from Debian's packages" >&2
(cd "$work" && apt-get download redis-tools libjemalloc2 liblzf1 >&2 2>/dev/null) || {
  if [[ $(id -u) == 0 ]]; then apt-get update -qq >&2; fi
  (cd "$work" && apt-get download redis-tools libjemalloc2 liblzf1 >&2)
}
for deb in "$work"/*.deb; do dpkg-deb -x "$deb" "$work/x"; done
mkdir -p "$dir/lib"
install -m 0755 "$work/x/usr/bin/redis-check-rdb" "$dir/redis-server.bin"
install -m 0755 "$work/x/usr/bin/redis-cli" "$dir/redis-cli.bin"
cp -a "$work"/x/usr/lib/x86_64-linux-gnu/libjemalloc.so* "$work"/x/usr/lib/x86_64-linux-gnu/liblzf.so* "$dir/lib/" 2>/dev/null \
  || cp -a "$work"/x/usr/lib/*/libjemalloc.so* "$work"/x/usr/lib/*/liblzf.so* "$dir/lib/"
for tool in redis-server redis-cli; do
  # redis-check-rdb is the server binary acting by argv[0]: any name without
  # "check-rdb" in it (here redis-server.bin) starts the server.
  cat >"$dir/$tool" <<WRAP
#!/bin/sh
LD_LIBRARY_PATH="$dir/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}" exec "$dir/$tool.bin" "\$@"
WRAP
  chmod 0755 "$dir/$tool"
done
"$dir/redis-server" --version >&2
echo "$dir/redis-server"
