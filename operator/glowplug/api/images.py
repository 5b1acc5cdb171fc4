"""Engine images known not to work with what glowplug renders, refused with the field named.

Facts about published images (``../shared/reference/engines.md``), not glowplug's pins
(those live in the engine modules). The CRD refuses the same tags with CEL rules on
``spec.engine``; a unit test proves each rule uses the regex below, so the API server and
``parse`` agree. The regexes are RE2 and Python compatible (CEL's ``matches`` is RE2).
"""

from __future__ import annotations

import re

# lmsysorg/sglang:vX.Y.Z-cu12* for X.Y.Z >= 0.5.20: SGLang published CUDA 12 images only up
# to v0.5.19-cu129; from 0.5.20 the plain tag is the CUDA 13 image. Never pulls.
SGLANG_CUDA12_AFTER_0519 = (
    r":v(0\.5\.(2[0-9]|[3-9][0-9]|[1-9][0-9][0-9]+)|0\.([6-9]|[1-9][0-9]+)\.[0-9]+"
    r"|[1-9][0-9]*\.[0-9]+\.[0-9]+)[^:/]*-cu12[0-9]*$"
)
# lmsysorg/sglang:vX.Y.Z... for X.Y.Z < 0.5.20: no /ready endpoint yet (added in 0.5.20),
# so the default probes never pass; engine.cuda "12" probes /health instead.
SGLANG_BEFORE_0520 = r":v0\.([0-4]\.[0-9]+|5\.1?[0-9])(\.post[0-9]+)?(-[^:/]*)?$"
# text-embeddings-inference:[arch-]X.Y[.Z] for X.Y < 1.9: rejects --served-model-name
# (first shipped in 1.9.0; clap exits 2 on an unknown argument).
TEI_BEFORE_19 = r"text-embeddings-inference:([a-z0-9]+-)*(0\.[0-9]+|1\.[0-8])(\.[0-9]+)?$"

CUDA_VALUES = ("", "12", "13")


def image_errors(engine: str, image: str, cuda: str) -> list[str]:
    """What is known to be wrong with this engine/image/cuda combination, by field."""
    errors: list[str] = []
    if cuda not in CUDA_VALUES:
        errors.append(f'spec.engine.cuda: {cuda!r} is not one of "", "12", "13"')
    if cuda and engine != "sglang":
        errors.append(
            "spec.engine.cuda: selects an SGLang build only; for another CUDA build of"
            f" {engine} set spec.engine.image"
        )
    if engine == "sglang" and re.search(SGLANG_CUDA12_AFTER_0519, image):
        errors.append(
            f"spec.engine.image: {image!r} does not exist: SGLang's CUDA 12 images end at"
            ' v0.5.19-cu129; for CUDA 12 nodes set spec.engine.cuda: "12" instead'
        )
    if engine == "sglang" and cuda != "12" and re.search(SGLANG_BEFORE_0520, image):
        errors.append(
            f"spec.engine.image: {image!r} is older than SGLang 0.5.20 and has no /ready;"
            ' set spec.engine.cuda: "12", which probes /health'
        )
    if engine == "tei" and re.search(TEI_BEFORE_19, image):
        errors.append(
            f"spec.engine.image: {image!r} is older than TEI 1.9 and rejects"
            " --served-model-name, which glowplug passes; use a 1.9 tag"
        )
    return errors
