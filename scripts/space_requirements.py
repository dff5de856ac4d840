"""Print the requirements file for a Hugging Face Space of a given hardware, from requirements.txt.

    python scripts/space_requirements.py cpu > requirements.txt       # before pushing to a CPU Space
    python scripts/space_requirements.py zerogpu > requirements.txt   # before pushing to a ZeroGPU Space

- ``cpu``: PyTorch's CPU-only wheels (pip reads ``--extra-index-url`` inside a requirements file;
  for the same version, ``2.x+cpu`` sorts above PyPI's ``2.x``) instead of PyPI's default Linux
  build, whose CUDA libraries a CPU Space never uses (measured here: torch 1.2 GB plus 3.2 GB of
  ``nvidia-*`` packages installed; the CPU-only build could not be measured on this machine,
  which cannot reach PyTorch's index).
- ``zerogpu``: torch and torchvision pinned to a pair ZeroGPU supports (its documentation lists the
  supported versions; it does not support torch.compile, which the app turns off there), plus
  the ``spaces`` package.

Kept as a generator rather than three hand-written files so the package list lives in one place.
"""

from __future__ import annotations

import sys
from pathlib import Path

REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"
CPU_INDEX = "--extra-index-url https://download.pytorch.org/whl/cpu"
ZEROGPU_TORCH = {"torch": "torch==2.8.0", "torchvision": "torchvision==0.23.0"}   # a pair ZeroGPU lists


def package(line: str) -> str:
    """The package name a requirement line names (``""`` for comments and blank lines)."""
    text = line.split("#", 1)[0].strip()
    for separator in "<>=!~;[ ":
        text = text.split(separator, 1)[0]
    return text.lower()


def space_requirements(hardware: str, lines: list[str]) -> list[str]:
    """``lines`` of requirements.txt rewritten for ``hardware`` (``cpu`` or ``zerogpu``)."""
    if hardware == "cpu":
        return [CPU_INDEX, *lines]
    if hardware == "zerogpu":
        pinned = [ZEROGPU_TORCH.get(package(line), line) for line in lines]
        return [*pinned, "spaces>=0.30"]
    raise ValueError(f"unknown Space hardware {hardware!r}; choose cpu or zerogpu")


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        print("\n".join(space_requirements(argv[0], REQUIREMENTS.read_text().splitlines())))
    except ValueError as error:
        print(f"space_requirements: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
