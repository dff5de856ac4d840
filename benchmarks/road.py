"""ROAD's time with each imputation solver, side by side in one run, and how far they disagree.

    python benchmarks/road.py [--images N] [--device cpu|cuda] [--repeats R]

On the first N asset images (``assets/*.jpg``) and the bundled EfficientNet-Lite0, the six maps of
``explain`` are scored by :func:`fusioncam.metrics.road` (9 percentiles × MoRF/LeRF = 108
imputations and 109 forwards per image) with ``solver="scipy"`` (sparse LU on the CPU, the only
solver before) and ``solver="torch"`` (multigrid-preconditioned CG on the model's device). Each
timing row says ``cold`` (the first ROAD call of the process with that solver) or ``warm`` (the
median of the repeats after it). It also reports, per image, the imputations alone: the torch
solver's CG iterations, its time, and the max |Δ| between the two solvers' filled images and
between the two ROAD scores. Only the same-run ratio counts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam import explain, load_model
from fusioncam.imputation import impute_batch, torch_fill
from fusioncam.metrics import ROAD_PERCENTILES, road, road_removed

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_road(model, explanation, solver: str) -> tuple[float, dict]:
    """Seconds of one ROAD over every map, and its scores."""
    synchronize(model.device)
    started = time.perf_counter()
    scores = road(model, explanation.evidence.x, explanation.evidence.target, explanation.maps, solver=solver)
    synchronize(model.device)
    return time.perf_counter() - started, scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2, help="how many asset images (by file name)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=1, help="warm ROAD runs per solver and image")
    args = parser.parse_args()
    model = load_model("efficientnet_lite0", device=args.device)
    paths = sorted(ASSETS.glob("*.jpg"))[:args.images]
    print(f"device {model.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{len(paths)} images, six maps each, {len(ROAD_PERCENTILES)} percentiles\n")
    print("| image | solver | run | ROAD seconds |")
    print("| --- | --- | --- | ---: |")
    seconds: dict[tuple[str, str], list[float]] = {}
    details = []
    for index, path in enumerate(paths):
        explanation = explain(model, path)
        scores = {}
        for solver in ("scipy", "torch"):
            runs = [timed_road(model, explanation, solver) for _ in range(1 + args.repeats if index == 0 else
                                                                          args.repeats)]
            if index == 0:
                print(f"| {path.name} | {solver} | cold | {runs[0][0]:.2f} |")
                runs = runs[1:]
            warm = statistics.median(t for t, _ in runs)
            seconds.setdefault(("warm", solver), []).append(warm)
            scores[solver] = runs[-1][1]
            print(f"| {path.name} | {solver} | warm | {warm:.2f} |")
        score_gap = max(float(np.abs(np.concatenate([scores["scipy"][m].morf - scores["torch"][m].morf,
                                                     scores["scipy"][m].lerf - scores["torch"][m].lerf])).max())
                        for m in explanation.maps)
        masks = np.stack([road_removed(np.asarray(saliency, dtype=np.float32), p, most) for saliency in
                          explanation.maps.values() for most in (True, False) for p in ROAD_PERCENTILES])
        x = explanation.evidence.x.to(model.device)
        reference = impute_batch(x, masks, solver="scipy")
        synchronize(model.device)
        started = time.perf_counter()
        filled, iterations = torch_fill(x, torch.from_numpy(masks))
        synchronize(model.device)
        solve_seconds = time.perf_counter() - started
        gap = float((filled.float().cpu() - reference).abs().max())
        details.append((path.name, iterations, solve_seconds, gap, score_gap))
    print("\n| image | CG iterations (108 masks × 3 channels, one batch) | torch imputation seconds (warm) | "
          "max abs Δ imputed pixel, torch vs scipy | max abs Δ ROAD score |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, iterations, solve_seconds, gap, score_gap in details:
        print(f"| {name} | {iterations} | {solve_seconds:.2f} | {gap:.1e} | {score_gap:.1e} |")
    scipy, ours = statistics.mean(seconds[("warm", "scipy")]), statistics.mean(seconds[("warm", "torch")])
    print(f"\nwarm ROAD per image: scipy {scipy:.2f} s, torch {ours:.2f} s: torch/scipy = {ours / scipy:.2f}")


if __name__ == "__main__":
    main()
