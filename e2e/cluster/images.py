"""Images for the test bed's real node, built here with buildah and cached by content.

No registry is reachable from this machine, so every image a real-node pod runs is built
locally from the repository's Dockerfiles and imported into the node's containerd:

- ``base``: a stand-in for the official ``python:3.11-slim`` (which cannot be pulled here):
  ``debootstrap --variant=minbase bookworm`` plus Debian's python3 (3.11), venv and pip.
  It also trusts the host's extra CA certificates (``/usr/local/share/ca-certificates``),
  so that ``pip`` inside a build reaches PyPI through the same TLS-intercepting proxy the
  host uses, if any. Only the test bed uses it; users build on ``python:3.11-slim``.
- ``pause``: the pod sandbox image, a static Go binary (``images/pause``).
- ``glowplug``: ``images/glowplug/Dockerfile`` with ``PYTHON_IMAGE`` set to the base.
- ``standin``: ``images/standin/Dockerfile``, the SGLang stand-in (a TEST DOUBLE, not
  SGLang) on top of the glowplug image.

Each image is keyed by a digest of everything that goes into it (Dockerfile, context
files, build arguments, the key of the image it builds on); a build writes a
docker-archive tarball named by that key under ``$GLOWPLUG_CACHE/images``, so an
unchanged image is never rebuilt. ``python -m e2e.cluster.images`` builds them all and
prints the build times.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
Log = Callable[[str], None]

# Bump when the way the base is made changes (the key then changes with it).
BASE_RECIPE = "2"
BASE_SUITE = "bookworm"
BASE_MIRROR = os.environ.get("GLOWPLUG_DEBIAN_MIRROR", "http://deb.debian.org/debian")
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
HOST_CA_DIR = Path("/usr/local/share/ca-certificates")


def _default_log(msg: str) -> None:
    print(f"[images] {msg}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    cache = os.environ.get("GLOWPLUG_CACHE") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "glowplug"
    )
    return Path(cache) / "images"


def version() -> str:
    for line in (REPO / "pyproject.toml").read_text().splitlines():
        if line.startswith("version = "):
            return line.split('"')[1]
    raise ValueError("no version in pyproject.toml")


@dataclass(frozen=True)
class Image:
    """One built image: its reference (as the kubelet normalises it) and its archive."""

    name: str
    ref: str
    key: str
    archive: Path


def _digest(parts: Iterable[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "big") + p)
    return h.hexdigest()[:16]


def _files(root: Path, relative: Iterable[str]) -> list[bytes]:
    """Names and contents of the given files and of every file under the given dirs."""
    out: list[bytes] = []
    for rel in relative:
        path = root / rel
        files = sorted(path.rglob("*")) if path.is_dir() else [path]
        for f in files:
            if f.is_file() and "__pycache__" not in f.parts:
                out += [str(f.relative_to(root)).encode(), f.read_bytes()]
    return out


def _base_key() -> str:
    """The base image's key: its recipe, suite, packages and the host CAs it trusts."""
    ca = _files(HOST_CA_DIR, sorted(p.name for p in HOST_CA_DIR.glob("*.crt")))
    return _digest(
        [BASE_RECIPE.encode(), BASE_SUITE.encode(), " ".join(BASE_PACKAGES).encode(), *ca]
    )


GLOWPLUG_DOCKERFILE = REPO / "images" / "glowplug" / "Dockerfile"
# What the glowplug image's build context holds (.dockerignore keeps it to these).
GLOWPLUG_INPUTS = ("pyproject.toml", "README.md", "operator/glowplug", ".dockerignore")


def _glowplug_key(base_key: str) -> str:
    return _digest(
        [GLOWPLUG_DOCKERFILE.read_bytes(), base_key.encode(), *_files(REPO, GLOWPLUG_INPUTS)]
    )


class Builder:
    """buildah with its own storage under the cache (never the machine's default store)."""

    def __init__(self, log: Log = _default_log) -> None:
        self.log = log
        self.dir = cache_dir()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}

    def buildah(self, *args: str, capture: bool = False) -> str:
        argv = [
            "buildah", "--root", str(self.dir / "storage"), "--runroot", str(self.dir / "run"),
            "--storage-driver", "overlay", *args,
        ]  # fmt: skip
        proc = subprocess.run(
            argv,
            stdout=subprocess.PIPE if capture else sys.stderr,
            stderr=subprocess.PIPE if capture else sys.stderr,
            text=True,
        )
        if proc.returncode != 0:
            err = (proc.stderr or "").strip()[-2000:] if capture else "(output above)"
            raise RuntimeError(f"buildah {' '.join(args[:2])} exited {proc.returncode}: {err}")
        return proc.stdout or ""

    def has(self, ref: str) -> bool:
        probe = subprocess.run(
            ["buildah", "--root", str(self.dir / "storage"), "--runroot", str(self.dir / "run"),
             "--storage-driver", "overlay", "inspect", "--type", "image", ref],
            capture_output=True,
        )  # fmt: skip
        return probe.returncode == 0

    # -- the images ------------------------------------------------------------------------

    def base(self) -> Image:
        key = _base_key()
        ref = f"localhost/glowplug-testbed/python-base:{BASE_SUITE}-{key}"
        archive = self.dir / f"base-{key}.tar"
        if self.has(ref):
            self.log(f"base {ref}: cached")
            return Image("base", ref, key, archive)
        t0 = time.monotonic()
        rootfs_tar = self._debootstrap()
        with tempfile.TemporaryDirectory(prefix="glowplug-base-", dir=self.dir) as tmp:
            rootfs = Path(tmp) / "rootfs"
            rootfs.mkdir()
            subprocess.run(["tar", "-C", str(rootfs), "-xf", str(rootfs_tar)], check=True)
            extra = rootfs / "usr/local/share/ca-certificates"
            for crt in sorted(HOST_CA_DIR.glob("*.crt")):
                shutil.copy(crt, extra / crt.name)
            subprocess.run(
                ["chroot", str(rootfs), "update-ca-certificates"], check=True, capture_output=True
            )
            # pip uses its own CA bundle unless told otherwise; point it at the system's.
            (rootfs / "etc/pip.conf").write_text(
                "[global]\ncert = /etc/ssl/certs/ca-certificates.crt\n"
            )
            # python:3.11-slim has `python` and `pip` on PATH; Debian only has python3.
            for name, target in (("python", "/usr/bin/python3"), ("pip", "/usr/bin/pip3")):
                link = rootfs / "usr/local/bin" / name
                link.unlink(missing_ok=True)
                link.symlink_to(target)
            for junk in ("var/cache/apt/archives", "var/lib/apt/lists", "usr/share/doc",
                         "usr/share/man", "usr/share/locale"):  # fmt: skip
                shutil.rmtree(rootfs / junk, ignore_errors=True)
                (rootfs / junk).mkdir(parents=True, exist_ok=True)
            tar = Path(tmp) / "rootfs.tar"
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tar), "."], check=True)
            ctr = self.buildah("from", "scratch", capture=True).strip()
            try:
                self.buildah("add", ctr, str(tar), "/", capture=True)
                self.buildah(
                    "config",
                    "--env", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                    "--env", "LANG=C.UTF-8",
                    "--label", "org.opencontainers.image.description=glowplug test bed: "
                    "Debian bookworm minbase + python3, standing in for python:3.11-slim",
                    "--cmd", "python3",
                    ctr,
                    capture=True,
                )  # fmt: skip
                self.buildah("commit", "--rm", ctr, ref, capture=True)
            except BaseException:
                self.buildah("rm", ctr, capture=True)
                raise
        self.times["base"] = time.monotonic() - t0
        self.log(f"base {ref}: built in {self.times['base']:.0f} s")
        return Image("base", ref, key, archive)

    def _debootstrap(self) -> Path:
        """The Debian root filesystem as a tarball, cached by suite and package list."""
        key = _digest([BASE_SUITE.encode(), " ".join(BASE_PACKAGES).encode()])
        out = self.dir / f"rootfs-{BASE_SUITE}-{key}.tar"
        if out.exists():
            self.log(f"base: debootstrap {BASE_SUITE}: cached ({out.name})")
            return out
        for tool in ("debootstrap", "buildah", "chroot"):
            if shutil.which(tool) is None:
                raise FileNotFoundError(f"{tool} is missing: run scripts/install-node-deps.sh")
        t0 = time.monotonic()
        self.log(
            f"base: debootstrap --variant=minbase {BASE_SUITE} + {', '.join(BASE_PACKAGES)} "
            f"from {BASE_MIRROR} (about 2-6 minutes, cached afterwards)..."
        )
        with tempfile.TemporaryDirectory(prefix="glowplug-rootfs-", dir=self.dir) as tmp:
            rootfs = Path(tmp) / "rootfs"
            subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
                 BASE_SUITE, str(rootfs), BASE_MIRROR],
                check=True, stdout=subprocess.DEVNULL, stderr=sys.stderr,
            )  # fmt: skip
            tmp_tar = out.with_suffix(".tmp")
            subprocess.run(["tar", "-C", str(rootfs), "-cf", str(tmp_tar), "."], check=True)
            tmp_tar.replace(out)
        self.times["debootstrap"] = time.monotonic() - t0
        self.log(f"base: debootstrap done in {self.times['debootstrap']:.0f} s ({out.name})")
        return out

    def pause(self) -> Image:
        src = REPO / "images" / "pause"
        go = subprocess.run(["go", "version"], capture_output=True, text=True, check=False)
        key = _digest([*_files(src, ["main.go", "go.mod", "Dockerfile"]), go.stdout.encode()])
        ref = "docker.io/glowplug-testbed/pause:3.10-glowplug"
        archive = self.dir / f"pause-{key}.tar"
        if archive.exists():
            self.log(f"pause {ref}: cached ({archive.name})")
            return Image("pause", ref, key, archive)
        if go.returncode != 0:
            raise FileNotFoundError("the Go toolchain (go) is missing: it builds the pause image")
        t0 = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="glowplug-pause-", dir=self.dir) as tmp:
            env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local")
            subprocess.run(
                ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", f"{tmp}/pause", "."],
                cwd=src, env=env, check=True,
            )  # fmt: skip
            self._bud(src / "Dockerfile", Path(tmp), ref, {})
        self._archive(ref, archive)
        self.times["pause"] = time.monotonic() - t0
        self.log(f"pause {ref}: built in {self.times['pause']:.0f} s")
        return Image("pause", ref, key, archive)

    def glowplug(self, base: Image) -> Image:
        dockerfile = GLOWPLUG_DOCKERFILE
        key = _glowplug_key(base.key)
        ref = f"docker.io/glowplug/glowplug:{version()}"
        archive = self.dir / f"glowplug-{key}.tar"
        if archive.exists():
            self.log(f"glowplug {ref}: cached ({archive.name})")
            return Image("glowplug", ref, key, archive)
        t0 = time.monotonic()
        self.log(f"glowplug {ref}: building from {dockerfile.relative_to(REPO)}...")
        self._bud(dockerfile, REPO, ref, {"PYTHON_IMAGE": base.ref, "VERSION": version()})
        self._archive(ref, archive)
        self.times["glowplug"] = time.monotonic() - t0
        self.log(f"glowplug {ref}: built in {self.times['glowplug']:.0f} s")
        return Image("glowplug", ref, key, archive)

    def standin(self, glowplug: Image) -> Image:
        dockerfile = REPO / "images" / "standin" / "Dockerfile"
        context = REPO / "e2e" / "standin"
        key = _digest([dockerfile.read_bytes(), glowplug.key.encode(), *_files(context, ["."])])
        ref = f"docker.io/glowplug-testbed/sglang-standin:{version()}"
        archive = self.dir / f"standin-{key}.tar"
        if archive.exists():
            self.log(f"standin {ref} (TEST DOUBLE): cached ({archive.name})")
            return Image("standin", ref, key, archive)
        t0 = time.monotonic()
        self.log(f"standin {ref} (TEST DOUBLE): building from {dockerfile.relative_to(REPO)}...")
        if not self.has(glowplug.ref):
            self._load(glowplug)
        self._bud(dockerfile, context, ref, {"GLOWPLUG_IMAGE": glowplug.ref})
        self._archive(ref, archive)
        self.times["standin"] = time.monotonic() - t0
        self.log(f"standin {ref}: built in {self.times['standin']:.0f} s")
        return Image("standin", ref, key, archive)

    def all(self) -> list[Image]:
        """Every image the real node runs (the base is only built on), built or cached."""
        t0 = time.monotonic()
        pause = self.pause()
        # The base is only needed (and built) when the glowplug image must be built.
        glowplug = self._glowplug_cached() or self.glowplug(self.base())
        standin = self.standin(glowplug)
        self.log(f"images ready in {time.monotonic() - t0:.0f} s")
        return [pause, glowplug, standin]

    # -- internals --------------------------------------------------------------------------

    def _glowplug_cached(self) -> Image | None:
        """The glowplug image when its archive exists for the current base key (no base
        build needed to find out: the base key depends on recipe and host CAs only)."""
        key = _glowplug_key(_base_key())
        archive = self.dir / f"glowplug-{key}.tar"
        if not archive.exists():
            return None
        ref = f"docker.io/glowplug/glowplug:{version()}"
        self.log(f"glowplug {ref}: cached ({archive.name})")
        return Image("glowplug", ref, key, archive)

    def _bud(self, dockerfile: Path, context: Path, ref: str, args: dict[str, str]) -> None:
        argv = ["bud", "--pull=never", "--isolation=chroot", "--layers=false", "-f",
                str(dockerfile), "-t", ref]  # fmt: skip
        # pip in the glowplug build fetches wheels from PyPI: host network (chroot
        # isolation shares it anyway); no other build needs the network.
        argv += ["--network=host"]
        for k, v in args.items():
            argv += ["--build-arg", f"{k}={v}"]
        self.buildah(*argv, str(context))

    def _archive(self, ref: str, archive: Path) -> None:
        tmp = archive.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self.buildah("push", "--quiet", ref, f"docker-archive:{tmp}:{ref}", capture=True)
        tmp.replace(archive)
        # Older archives of the same image are dead weight: keep the newest only.
        stem = archive.name.split("-")[0]
        for old in self.dir.glob(f"{stem}-*.tar"):
            if old != archive:
                old.unlink(missing_ok=True)

    def _load(self, image: Image) -> None:
        self.buildah("pull", "--quiet", f"docker-archive:{image.archive}", capture=True)


def manifest_refs(archive: Path) -> list[str]:
    """The image names a docker-archive carries (its manifest.json RepoTags)."""
    import tarfile

    with tarfile.open(archive) as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        return [t for entry in json.load(member) for t in entry.get("RepoTags") or []]


def main() -> int:
    builder = Builder()
    images = builder.all()
    for img in images:
        size = img.archive.stat().st_size / 1e6
        print(f"{img.name:10} {img.ref:55} {size:7.1f} MB  {img.archive}")
    for name, secs in builder.times.items():
        print(f"built {name} in {secs:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
