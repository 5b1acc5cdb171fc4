#!/usr/bin/env bash
# The kind path, for machines with Docker: build the glowplug image, load it into a kind
# cluster, install the chart, and run the Helm end-to-end suite with the tei CPU engine
# (Hugging Face text-embeddings-inference, real embeddings, no GPU).
#
#   e2e/kind/kind.sh up|load|deploy|e2e|down      (or: make kind-up kind-load deploy e2e-kind kind-down)
#
# This repository's CI has no Docker and cannot run this path; it is exercised by hand.
# Settings: KIND_CLUSTER (glowplug), IMAGE (glowplug/glowplug:<version>), KIND_KUBECONFIG.
set -euo pipefail
cd "$(dirname "$0")/../.."

CLUSTER="${KIND_CLUSTER:-glowplug}"
VERSION="$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)"
IMAGE="${IMAGE:-glowplug/glowplug:$VERSION}"
KCFG="${KIND_KUBECONFIG:-${XDG_CACHE_HOME:-$HOME/.cache}/glowplug/kind-$CLUSTER.kubeconfig}"
RELEASE=glowplug
RELEASE_NS=glowplug-system

say() { echo "[kind] $*" >&2; }
need() {
  command -v "$1" >/dev/null 2>&1 || { say "$1 is not installed: $2"; exit 1; }
}
# helm and kubectl: from PATH, else the test-bed binaries (make binaries).
tool() {
  if command -v "$1" >/dev/null 2>&1; then command -v "$1"; return; fi
  local d
  for d in "${XDG_CACHE_HOME:-$HOME/.cache}"/glowplug/bin/*/; do
    [[ -x "$d$1" ]] && { echo "$d$1"; return; }
  done
  say "$1 not found: install it or run 'make binaries'"; exit 1
}

case "${1:-}" in
  up)
    need docker "https://docs.docker.com/engine/install/"
    need kind "go install sigs.k8s.io/kind@latest"
    if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
      say "cluster $CLUSTER exists"
    else
      kind create cluster --name "$CLUSTER" --wait 180s
    fi
    mkdir -p "$(dirname "$KCFG")"
    kind get kubeconfig --name "$CLUSTER" >"$KCFG"
    echo "export KUBECONFIG=$KCFG"
    ;;
  load)
    need kind "go install sigs.k8s.io/kind@latest"
    kind load docker-image "$IMAGE" --name "$CLUSTER"
    ;;
  deploy)
    repo="${IMAGE%:*}"; tag="${IMAGE##*:}"
    KUBECONFIG="$KCFG" "$(tool helm)" upgrade --install "$RELEASE" charts/glowplug \
      -n "$RELEASE_NS" --create-namespace \
      --set image.repository="$repo" --set image.tag="$tag" --set image.pullPolicy=IfNotPresent \
      --wait --timeout 300s
    say "installed; try: KUBECONFIG=$KCFG kubectl -n $RELEASE_NS port-forward svc/$RELEASE-activator 8000:80"
    ;;
  e2e)
    # The suite installs and removes its own releases; a cluster-wide release from
    # `deploy` would handle its EmbeddingServices too, so it goes first.
    if KUBECONFIG="$KCFG" "$(tool helm)" status "$RELEASE" -n "$RELEASE_NS" >/dev/null 2>&1; then
      say "uninstalling the '$RELEASE' release from 'deploy' first (the suite installs its own)"
      KUBECONFIG="$KCFG" "$(tool helm)" uninstall "$RELEASE" -n "$RELEASE_NS" --wait
    fi
    GLOWPLUG_E2E_KUBECONFIG="$KCFG" GLOWPLUG_E2E_ENGINE=tei GLOWPLUG_E2E_IMAGE="$IMAGE" \
      .venv/bin/python -m pytest -v -rs e2e/tests/test_e2e_helm.py
    ;;
  down)
    need kind "go install sigs.k8s.io/kind@latest"
    kind delete cluster --name "$CLUSTER"
    rm -f "$KCFG"
    ;;
  *)
    echo "usage: $0 up|load|deploy|e2e|down" >&2
    exit 2
    ;;
esac
