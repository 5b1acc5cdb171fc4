#!/usr/bin/env bash
# Installs what the test bed's real node needs, from Debian packages (idempotent: a
# package already present is skipped, and nothing runs when all are present):
#   containerd, runc            the container runtime the kubelet talks to (CRI)
#   containernetworking-plugins bridge, host-local, loopback CNI plugins (/usr/lib/cni)
#   iptables, conntrack         kube-proxy's Service routing
#   buildah                     builds images from the repo's Dockerfiles (no daemon)
#   debootstrap                 a Debian base image, since no registry is reachable
#   umoci                       packs that base into an OCI layout buildah can read
# Needs root (apt-get). Prints progress lines; the last line is the install time.
set -euo pipefail

PACKAGES=(containerd runc containernetworking-plugins iptables conntrack buildah
          debootstrap umoci)
log() { echo "[install-node-deps] $*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  log "all present: ${PACKAGES[*]}"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  log "ERROR: missing ${missing[*]}; run this script as root (it uses apt-get)"
  exit 2
fi
start=$SECONDS
log "installing ${missing[*]} (apt-get)..."
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >&2
# --no-install-recommends: docker-style extras (e.g. buildah's recommends) are not needed.
apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
# Debian's containerd package starts nothing here (PID 1 is not systemd); the test bed
# runs its own containerd with a private root, state and socket.
log "installed in $((SECONDS - start)) s"
