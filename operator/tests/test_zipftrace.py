"""The second trace: deterministic, Zipf-skewed across services and queries, daily cycle."""

from __future__ import annotations

import collections
import struct
import zlib
from pathlib import Path

from e2e.bench import pngplot

from glowplug.operator import zipftrace


def test_deterministic_skewed_and_cyclic() -> None:
    a = zipftrace.generate(3, services=12)
    assert a == zipftrace.generate(3, services=12)
    sizes = [len(rows) for rows in a]
    assert sizes[0] > 3 * sizes[5] > 0  # Zipf popularity across services
    for rows in a:
        assert rows == sorted(rows)
        assert all(0 <= at < zipftrace.DAY and d >= 0 for at, d, _ in rows)
    hours = collections.Counter(int(at // 3600) for rows in a for at, _, _ in rows)
    assert hours[14] > 4 * hours[3]  # the daily cycle: afternoon peak, quiet night
    queries = collections.Counter(i for rows in a for _, _, ins in rows for i in ins if i >= 0)
    docs = [i for rows in a for _, _, ins in rows for i in ins if i < 0]
    assert len(docs) == len(set(docs)) > 0  # documents never repeat
    top = sum(c for _, c in queries.most_common(1000)) / sum(queries.values())
    assert 0.25 < top < 0.5  # the top 1,000 queries: about 37 % of queries


def test_png_writer_makes_a_valid_png(tmp_path: Path) -> None:
    out = tmp_path / "f.png"
    pngplot.frontier(
        out,
        "TEST",
        [
            pngplot.Series("FIXED", [pngplot.Point(1, 10, "1M"), pngplot.Point(2, 5, "5M")],
                           pngplot.BLUE, True),
            pngplot.Series("AUTO", [pngplot.Point(1.5, 4, "AUTO")], pngplot.ORANGE, False),
        ],
        width=200,
        height=120,
    )  # fmt: skip
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height, depth, kind = struct.unpack(">IIBB", data[16:26])
    assert (width, height, depth, kind) == (200, 120, 8, 2)
    idat_len = struct.unpack(">I", data[33:37])[0]
    assert data[37:41] == b"IDAT"
    raw = zlib.decompress(data[41 : 41 + idat_len])
    assert len(raw) == height * (1 + 3 * width)
    assert raw.count(bytes(pngplot.ORANGE)) > 10  # the auto point was drawn
