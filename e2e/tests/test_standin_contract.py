"""The stand-in's command line is held to SGLang's real parser (sglang 0.5.23's own, read
by ``e2e.engine_parsers`` from ``scripts/engine-env.sh sglang``): every flag the stand-in
accepts exists there with the same arity, and none of its own knobs is a SGLang flag. With
that, "the stand-in exits 2 on an unknown flag" means "SGLang would too"."""

from __future__ import annotations

import subprocess
import sys

import pytest

from e2e.cluster import REPO
from e2e.engine_parsers import accepted_flags, valueless_flags
from e2e.standin.sglang import SGLANG_FLAGS


@pytest.fixture(scope="module")
def real_flags() -> dict[str, int]:
    """Every option of sglang's parser -> 0 (a switch) or 1 (takes a value)."""
    switches = valueless_flags("sglang")
    return {f: 0 if f in switches else 1 for f in accepted_flags("sglang")}


def test_every_standin_flag_is_a_real_sglang_flag_with_the_same_arity(
    real_flags: dict[str, int],
) -> None:
    assert len(real_flags) > 100, "sglang's parser came back nearly empty"
    missing = sorted(f for f in SGLANG_FLAGS if f not in real_flags)
    assert not missing, f"the stand-in accepts flags sglang 0.5.23 does not: {missing}"
    wrong = {f: (n, real_flags[f]) for f, n in SGLANG_FLAGS.items() if real_flags[f] != n}
    assert not wrong, f"(stand-in arity, sglang arity) differ: {wrong}"


def test_standin_knobs_are_not_sglang_flags(real_flags: dict[str, int]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "e2e.standin.sglang", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )  # fmt: skip
    knobs = {
        w.strip("[],") for w in out.stdout.split() if w.startswith(("--standin", "[--standin"))
    }
    assert knobs, out.stdout
    assert not knobs & set(real_flags)


def test_a_flag_sglang_lacks_makes_the_standin_exit_2(real_flags: dict[str, int]) -> None:
    assert "--tp" not in real_flags  # the old stand-in accepted it; sglang does not
    rc = subprocess.run(
        [sys.executable, "-m", "e2e.standin.sglang", "--model-path", "m", "--tp", "2"],
        cwd=REPO, capture_output=True, check=False, timeout=60,
    ).returncode  # fmt: skip
    assert rc == 2
