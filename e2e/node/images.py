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
            )
            for e in doc.get("images", [])
        ]
        return ImageMap(entries, path)

    def argv(self, image: str, command: list[str], args: list[str]) -> list[str]:
        """The local argv for a container, or ImageNotMapped."""
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
                run = [x.format(python=sys.executable, repo=REPO) for x in e.run]
                return [*run, *words[cut:]]
        raise ImageNotMapped(
            f'image "{image}" is not in the test bed image map ({self.source}); the test bed '
            "pulls no images, it runs mapped local commands"
        )
