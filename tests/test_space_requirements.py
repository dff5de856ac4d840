"""The Space requirements generator keeps every package of requirements.txt and changes only torch."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from space_requirements import CPU_INDEX, REQUIREMENTS, package, space_requirements

LINES = REQUIREMENTS.read_text().splitlines()
PACKAGES = {package(line) for line in LINES} - {""}


def test_cpu_space_takes_torch_from_the_cpu_index() -> None:
    cpu = space_requirements("cpu", LINES)
    assert cpu[0] == CPU_INDEX and {package(line) for line in cpu[1:]} - {""} == PACKAGES


def test_zerogpu_space_pins_a_supported_torch_and_adds_spaces() -> None:
    zero = space_requirements("zerogpu", LINES)
    assert "torch==2.8.0" in zero and "torchvision==0.23.0" in zero
    assert {package(line) for line in zero} - {""} == PACKAGES | {"spaces"}
