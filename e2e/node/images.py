"""The image map: which local command stands in for a container image (see images.yaml)."""

from __future__ import annotations

import fnmatch
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MAP = Path(__file__).with_name("images.yaml")


class ImageNotMapped(Exception):
    """The image has no entry: the pod's container waits with ErrImagePull."""


@dataclass(frozen=True)
class Entry:
    match: str
    run: tuple[str, ...]
    skip_through: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Launch:
    """What the agent starts for a container: argv, and the image's environment (under
    the container's own env, as an image's ENV is)."""

    argv: list[str]
    env: dict[str, str]


def engine_env_dir(engine: str) -> Path:
    """Where scripts/engine-env.sh keeps ``engine``'s environment for its pinned version."""
    from glowplug.engines import sglang, vllm  # the one place each version is written

    version = {"vllm": vllm.VERSION, "sglang": sglang.VERSION}[engine]
    base = os.environ.get("GLOWPLUG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "glowplug"
    )
    return Path(base) / "engines" / f"{engine}-{version}"


def _placeholders(image: str, needed: str) -> dict[str, str]:
    values = {"python": sys.executable, "repo": str(REPO), "image": image}
    if "{vllm_env}" in needed:
        env_dir = engine_env_dir("vllm")
        if not (env_dir / ".complete").exists():
            # Like a pull that cannot succeed: the agent never installs 4 GB by itself.
            raise ImageNotMapped(
                f'image "{image}" runs the real vLLM server from {env_dir}, which is not '
                "installed: run scripts/engine-env.sh vllm"
            )
        values["vllm_env"] = str(env_dir)
    return values


def _strip_registry(image: str) -> str:
    first, _, rest = image.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        return rest
    return image


class ImageMap:
    def __init__(self, entries: list[Entry], source: Path) -> None:
        self.entries = entries
        self.source = source

    @staticmethod
    def load(path: Path | None = None) -> ImageMap:
        path = path or Path(os.environ.get("GLOWPLUG_IMAGE_MAP") or DEFAULT_MAP)
        doc = yaml.safe_load(path.read_text()) or {}
        entries = [
            Entry(
                match=str(e["match"]),
                run=tuple(str(x) for x in e["run"]),
                skip_through=tuple(str(x) for x in e.get("skipThrough", [])),
                env=tuple((str(k), str(v)) for k, v in (e.get("env") or {}).items()),
            )
            for e in doc.get("images", [])
        ]
        return ImageMap(entries, path)

    def argv(self, image: str, command: list[str], args: list[str]) -> list[str]:
        """The local argv for a container, or ImageNotMapped."""
        return self.resolve(image, command, args).argv

    def resolve(self, image: str, command: list[str], args: list[str]) -> Launch:
        """The local argv and image environment for a container, or ImageNotMapped."""
        candidates = {image, _strip_registry(image)}
        for e in self.entries:
            if any(fnmatch.fnmatchcase(c, e.match) for c in candidates):
                words = [*command, *args]
                cut = 0
                for i, w in enumerate(words):
                    if w.startswith("--"):  # flags from here on; a flag value is no entrypoint
                        break
                    if w.rsplit("/", 1)[-1] in e.skip_through:
                        cut = i + 1
                values = _placeholders(image, " ".join([*e.run, *(v for _, v in e.env)]))
                run = [x.format(**values) for x in e.run]
                env = {k: v.format(**values) for k, v in e.env}
                return Launch([*run, *words[cut:]], env)
        raise ImageNotMapped(
            f'image "{image}" is not in the test bed image map ({self.source}); the test bed '
            "pulls no images, it runs mapped local commands"
        )
