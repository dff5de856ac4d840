"""Summarise sanity checks over images: the last-step Spearman and SSIM per method, as a Markdown table.

Reads every ``*/sanity.json`` under the folders given (one per image, as written by
``python -m fusioncam sanity IMAGE --out FOLDER/NAME``); a method's row pools the images that
checked it. Spread: the standard deviation over images and the range.

    python benchmarks/sanity_table.py results/sanity/gradient results/sanity/region
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

PASS_BELOW = 0.5   # fusioncam.sanity.PASS_BELOW


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    args = parser.parse_args()
    last: dict[str, list[tuple[float, float]]] = defaultdict(list)
    curves: dict[str, list[list[float]]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    steps: list[str] = []
    for folder in args.folders:
        for path in sorted(folder.glob("*/sanity.json")):
            data = json.loads(path.read_text())
            group = ",".join(data["methods"])
            seconds[group].append(data["seconds"])
            for name, record in data["methods"].items():
                steps = record["steps"]
                last[name].append((record["spearman"][-1], record["ssim"][-1]))
                curves[name].append(record["spearman"])
    print("| Method | Images | Spearman after the last step (mean ± sd) | range | fell below "
          f"{PASS_BELOW:g} | SSIM after the last step (mean ± sd) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, values in last.items():
        rho, structural = np.array(values).T
        print(f"| {name} | {len(rho)} | {rho.mean():+.3f} ± {rho.std(ddof=1) if len(rho) > 1 else 0:.3f} "
              f"| {rho.min():+.2f} … {rho.max():+.2f} | {int((rho < PASS_BELOW).sum())}/{len(rho)} "
              f"| {structural.mean():.3f} ± {structural.std(ddof=1) if len(rho) > 1 else 0:.3f} |")
    print()
    print("Mean Spearman after each step (" + ", ".join(f"{i} {s}" for i, s in enumerate(steps, 1)) + "):")
    print()
    print("| Method | " + " | ".join(str(i) for i in range(1, len(steps) + 1)) + " |")
    print("| --- |" + " ---: |" * len(steps))
    for name, runs in curves.items():
        mean = np.mean(np.array(runs), axis=0)
        print(f"| {name} | " + " | ".join(f"{v:+.2f}" for v in mean) + " |")
    print()
    for group, values in seconds.items():
        print(f"{group}: {np.mean(values):.0f} s per image of sanity_check (mean of {len(values)}, shared machine)")


if __name__ == "__main__":
    main()
