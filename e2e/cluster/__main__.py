"""``python -m e2e.cluster up|down|status``: the local test bed from the command line."""

from __future__ import annotations

import argparse
import sys

from e2e.cluster import Cluster, ensure_binaries


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m e2e.cluster", description=__doc__)
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument(
        "--force", action="store_true", help="down: stop it even while test sessions use it"
    )
    args = p.parse_args(argv)
    if args.action == "up":
        cluster = Cluster(bin_dir=ensure_binaries())
        if not cluster.up(started_by="cli"):
            print(f"export KUBECONFIG={cluster.kubeconfig}", flush=True)
        # kubectl 1.35 and helm 4 of the test bed (the machine's own may be too old).
        print(f"[cluster] kubectl, helm: export PATH={cluster.bin_dir}:$PATH", file=sys.stderr)
        return 0
    cluster = Cluster()
    if args.action == "down":
        users = cluster.users()
        if users and not args.force:
            pids = ", ".join(str(u.pid) for u in users)
            print(
                f"not stopping: test session(s) {pids} are using the test bed "
                "(python -m e2e.cluster down --force stops it anyway)",
                file=sys.stderr,
            )
            return 1
        cluster.down()
        return 0
    running = cluster.running()
    print("running" if running else "stopped")
    if running:
        print(f"export KUBECONFIG={cluster.kubeconfig}")
    return 0 if running else 1


if __name__ == "__main__":
    sys.exit(main())
