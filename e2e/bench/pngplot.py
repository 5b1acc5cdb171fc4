"""A tiny PNG plotter for the benchmark's frontier charts: no matplotlib, no numpy.

An RGB canvas with lines, dots and a 3x5 pixel font (upper case, digits and a little
punctuation), written as a PNG with ``zlib`` (filter 0 on every row). Enough for a
scatter of (GPU-hours, wakes) points with axes, ticks and labels; the repo ships it so
that ``make bench`` needs nothing beyond the standard library.
"""

from __future__ import annotations

import itertools
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

Color = tuple[int, int, int]
BLACK: Color = (0, 0, 0)
GREY: Color = (200, 200, 200)
BLUE: Color = (31, 119, 180)
ORANGE: Color = (230, 110, 20)
GREEN: Color = (44, 160, 44)
RED: Color = (214, 39, 40)

# 3 columns x 5 rows per glyph; '#' is ink.
_FONT: dict[str, tuple[str, ...]] = {
    "0": ("###", "#.#", "#.#", "#.#", "###"),
    "1": (".#.", "##.", ".#.", ".#.", "###"),
    "2": ("###", "..#", "###", "#..", "###"),
    "3": ("###", "..#", ".##", "..#", "###"),
    "4": ("#.#", "#.#", "###", "..#", "..#"),
    "5": ("###", "#..", "###", "..#", "###"),
    "6": ("###", "#..", "###", "#.#", "###"),
    "7": ("###", "..#", ".#.", ".#.", ".#."),
    "8": ("###", "#.#", "###", "#.#", "###"),
    "9": ("###", "#.#", "###", "..#", "###"),
    "A": (".#.", "#.#", "###", "#.#", "#.#"),
    "B": ("##.", "#.#", "##.", "#.#", "##."),
    "C": (".##", "#..", "#..", "#..", ".##"),
    "D": ("##.", "#.#", "#.#", "#.#", "##."),
    "E": ("###", "#..", "##.", "#..", "###"),
    "F": ("###", "#..", "##.", "#..", "#.."),
    "G": (".##", "#..", "#.#", "#.#", ".##"),
    "H": ("#.#", "#.#", "###", "#.#", "#.#"),
    "I": ("###", ".#.", ".#.", ".#.", "###"),
    "J": ("..#", "..#", "..#", "#.#", ".#."),
    "K": ("#.#", "#.#", "##.", "#.#", "#.#"),
    "L": ("#..", "#..", "#..", "#..", "###"),
    "M": ("#.#", "###", "###", "#.#", "#.#"),
    "N": ("##.", "#.#", "#.#", "#.#", "#.#"),
    "O": (".#.", "#.#", "#.#", "#.#", ".#."),
    "P": ("##.", "#.#", "##.", "#..", "#.."),
    "Q": (".#.", "#.#", "#.#", "##.", ".##"),
    "R": ("##.", "#.#", "##.", "#.#", "#.#"),
    "S": (".##", "#..", ".#.", "..#", "##."),
    "T": ("###", ".#.", ".#.", ".#.", ".#."),
    "U": ("#.#", "#.#", "#.#", "#.#", "###"),
    "V": ("#.#", "#.#", "#.#", "#.#", ".#."),
    "W": ("#.#", "#.#", "###", "###", "#.#"),
    "X": ("#.#", "#.#", ".#.", "#.#", "#.#"),
    "Y": ("#.#", "#.#", ".#.", ".#.", ".#."),
    "Z": ("###", "..#", ".#.", "#..", "###"),
    " ": ("...", "...", "...", "...", "..."),
    ".": ("...", "...", "...", "...", ".#."),
    ",": ("...", "...", "...", ".#.", "#.."),
    "-": ("...", "...", "###", "...", "..."),
    ":": ("...", ".#.", "...", ".#.", "..."),
    "/": ("..#", "..#", ".#.", "#..", "#.."),
    "%": ("#.#", "..#", ".#.", "#..", "#.#"),
    "(": (".#.", "#..", "#..", "#..", ".#."),
    ")": (".#.", "..#", "..#", "..#", ".#."),
    "=": ("...", "###", "...", "###", "..."),
    "[": ("##.", "#..", "#..", "#..", "##."),
    "]": (".##", "..#", "..#", "..#", ".##"),
    "+": ("...", ".#.", "###", ".#.", "..."),
    "$": (".##", "##.", ".#.", ".##", "##."),
}


class Canvas:
    def __init__(self, width: int, height: int, background: Color = (255, 255, 255)) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i : i + 3] = bytes(color)

    def disc(self, x: int, y: int, r: int, color: Color) -> None:
        for dy in range(-r, r + 1):
            for dx in range(-r, r + 1):
                if dx * dx + dy * dy <= r * r:
                    self.dot(x + dx, y + dy, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        steps = max(abs(x1 - x0), abs(y1 - y0), 1)
        for s in range(steps + 1):
            x = round(x0 + (x1 - x0) * s / steps)
            y = round(y0 + (y1 - y0) * s / steps)
            if width <= 1:
                self.dot(x, y, color)
            else:
                self.disc(x, y, width // 2, color)

    def text(self, x: int, y: int, s: str, color: Color = BLACK, scale: int = 2) -> int:
        """Draw ``s`` with its top-left at (x, y); returns the width drawn."""
        cx = x
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        for sy in range(scale):
                            for sx in range(scale):
                                self.dot(cx + col * scale + sx, y + row * scale + sy, color)
            cx += 4 * scale
        return cx - x

    def png(self) -> bytes:
        raw = b"".join(
            b"\x00" + bytes(self.pixels[3 * y * self.width : 3 * (y + 1) * self.width])
            for y in range(self.height)
        )

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 9))
            + chunk(b"IEND", b"")
        )


def text_width(s: str, scale: int = 2) -> int:
    return 4 * scale * len(s)


@dataclass(frozen=True)
class Point:
    x: float  # GPU-hours
    y: float  # wakes
    label: str


@dataclass(frozen=True)
class Series:
    name: str
    points: Sequence[Point]
    color: Color
    joined: bool  # a line through the points (the fixed-timeout frontier)


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    span = max(hi - lo, 1e-9)
    raw = span / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt(v: float) -> str:
    return f"{v:g}" if abs(v) >= 10 or v == int(v) else f"{v:.1f}"


def frontier(
    path: Path,
    title: str,
    series: Sequence[Series],
    *,
    x_label: str = "GPU-HOURS",
    y_label: str = "WAKES",
    width: int = 720,
    height: int = 480,
) -> None:
    """A scatter of the series on shared axes, written to ``path`` as PNG."""
    c = Canvas(width, height)
    left, right, top, bottom = 80, 20, 50, 60
    pts = [p for s in series for p in s.points]
    x0, x1 = min(p.x for p in pts), max(p.x for p in pts)
    y0, y1 = 0.0, max(p.y for p in pts)
    pad = (x1 - x0) * 0.08 or 1.0
    x0, x1, y1 = max(0.0, x0 - pad), x1 + pad, y1 * 1.1 or 1.0
    w, h = width - left - right, height - top - bottom

    def px(v: float) -> int:
        return left + round((v - x0) / (x1 - x0) * w)

    def py(v: float) -> int:
        return top + h - round((v - y0) / (y1 - y0) * h)

    for t in _ticks(x0, x1):
        c.line(px(t), top, px(t), top + h, GREY)
        label = _fmt(t)
        c.text(px(t) - text_width(label) // 2, top + h + 8, label)
    for t in _ticks(y0, y1):
        c.line(left, py(t), left + w, py(t), GREY)
        label = _fmt(t)
        c.text(left - 8 - text_width(label), py(t) - 5, label)
    c.line(left, top + h, left + w, top + h, BLACK)
    c.line(left, top, left, top + h, BLACK)
    c.text(left + (w - text_width(x_label)) // 2, height - 26, x_label)
    c.text(8, top - 30, y_label)
    c.text(left + (w - text_width(title)) // 2, 12, title)
    lx = left + w - 10
    for i, s in enumerate(series):
        ordered = sorted(s.points, key=lambda p: p.x)
        if s.joined:
            for a, b in itertools.pairwise(ordered):
                c.line(px(a.x), py(a.y), px(b.x), py(b.y), s.color, 2)
        for p in ordered:
            c.disc(px(p.x), py(p.y), 5, s.color)
            # Joined (frontier) labels above the point, the others below: they rarely meet.
            c.text(px(p.x) + 8, py(p.y) + (-14 if s.joined else 6), p.label, s.color)
        # Legend, top right.
        name_w = text_width(s.name)
        c.disc(lx - name_w - 14, top + 10 + 18 * i, 5, s.color)
        c.text(lx - name_w, top + 5 + 18 * i, s.name, s.color)
    path.write_bytes(c.png())


@dataclass(frozen=True)
class Line:
    name: str
    points: Sequence[tuple[float, float]]  # (x, y), x ascending
    color: Color


@dataclass(frozen=True)
class Panel:
    title: str
    lines: Sequence[Line]
    y_label: str = ""


def panels(
    path: Path,
    title: str,
    grid: Sequence[Panel],
    *,
    x_label: str = "MINUTES",
    columns: int = 2,
    cell_width: int = 520,
    cell_height: int = 300,
) -> None:
    """Line charts on a grid, all on one x range (say, minutes of a run), as one PNG."""
    rows = math.ceil(len(grid) / columns)
    width, height = columns * cell_width, rows * cell_height + 40
    c = Canvas(width, height)
    c.text((width - text_width(title, 3)) // 2, 10, title, scale=3)
    xs = [x for p in grid for ln in p.lines for x, _ in ln.points]
    x0, x1 = (min(xs), max(xs)) if xs else (0.0, 1.0)
    x1 = x1 if x1 > x0 else x0 + 1.0
    for k, panel in enumerate(grid):
        ox, oy = (k % columns) * cell_width, 40 + (k // columns) * cell_height
        _panel(c, panel, ox, oy, cell_width, cell_height, (x0, x1), x_label)
    path.write_bytes(c.png())


def _panel(
    c: Canvas,
    panel: Panel,
    ox: int,
    oy: int,
    width: int,
    height: int,
    xr: tuple[float, float],
    x_label: str,
) -> None:
    left, right, top, bottom = 70, 20, 50, 46
    w, h = width - left - right, height - top - bottom
    x0, x1 = xr
    ys = [y for ln in panel.lines for _, y in ln.points]
    y0 = min(0.0, min(ys)) if ys else 0.0
    y1 = max(ys) * 1.15 if ys and max(ys) > y0 else y0 + 1.0

    def px(v: float) -> int:
        return ox + left + round((v - x0) / (x1 - x0) * w)

    def py(v: float) -> int:
        return oy + top + h - round((v - y0) / (y1 - y0) * h)

    for t in _ticks(x0, x1):
        c.line(px(t), oy + top, px(t), oy + top + h, GREY)
        label = _fmt(t)
        c.text(px(t) - text_width(label) // 2, oy + top + h + 6, label)
    for t in _ticks(y0, y1, 4):
        c.line(ox + left, py(t), ox + left + w, py(t), GREY)
        label = _fmt(t)
        c.text(ox + left - 6 - text_width(label), py(t) - 5, label)
    c.line(ox + left, oy + top + h, ox + left + w, oy + top + h, BLACK)
    c.line(ox + left, oy + top, ox + left, oy + top + h, BLACK)
    c.text(ox + left + (w - text_width(x_label)) // 2, oy + height - 18, x_label)
    c.text(ox + left, oy + 8, panel.title)
    if panel.y_label:
        c.text(ox + 6, oy + 26, panel.y_label)
    lx = ox + left + w
    for i, ln in enumerate(panel.lines):
        for (xa, ya), (xb, yb) in itertools.pairwise(ln.points):
            c.line(px(xa), py(ya), px(xb), py(yb), ln.color, 2)
        if len(ln.points) == 1:
            (xa, ya) = ln.points[0]
            c.disc(px(xa), py(ya), 3, ln.color)
        name_w = text_width(ln.name)
        c.text(lx - name_w, oy + 26 + 14 * i, ln.name, ln.color)
