"""Anytime Score-CAM: how fast the partial maps converge under each channel order.

    python benchmarks/anytime.py [--images 50] [--images-dir DIR] [--step 10] [--offset 0]
                                 [--model M] [--layer L]
                                 [--device cpu] [--cache /tmp/anytime-cache] [--orders a,b,...]
                                 [--fusion-orders a,b,... | all] [--fractions 0.05,0.1,0.25,0.5]
                                 [--refit-every 16] [--threads N]

Per image (sorted file names of ``--images-dir``, every ``--step``-th from the ``--offset``-th, the
first ``--images``; the model's top-1 class, default layer and baseline): stage 1 (``capture_evidence``) and the exact
Score-CAM scores of every channel (``score_regions``, cached per image in ``--cache`` so a rerun
makes no masked pass). Every order is then evaluated offline: after scoring the first
``ceil(f · K_eff)`` non-flat channels of the order, the partial scores are METHOD.md's (flat
channels keep the baseline score, unscored ones ``−inf``), and the partial Score-CAM map
``region_map`` and the partial Fusion-CAM map (``derive`` on the partial evidence: 4 scoring
forwards each) are compared with the exact ones by Pearson correlation over the pixels.
``refit`` re-predicts the remaining scores from the ones made after every ``--refit-every``
channels (``ordering.refit_priority``), as an anytime run could. ``oracle`` orders by the exact
scores themselves: the best a static order could do, not available before the passes.
``spearman`` is the rank correlation of an order's priority with the exact scores over the
non-flat channels. Prints Markdown tables of mean / minimum over the images.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam import load_model
from fusioncam.explain import FusionParams, RegionEvidence, capture_evidence, derive, score_regions
from fusioncam.images import load_image
from fusioncam.models import LoadedModel
from fusioncam.ordering import DEFAULT_ORDER, ORDERS, channel_priority, refit_priority
from fusioncam.region import flat_channels, region_map

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"
ORACLE = "oracle"
REFIT = "refit"


def correlation(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """Pearson correlation of two maps over their pixels (0 when either is constant)."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def image_paths(folder: Path, count: int, step: int, offset: int = 0) -> list[Path]:
    """Every ``step``-th image of ``folder`` by sorted file name from the ``offset``-th, the first ``count``."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    return paths[offset::step][:count]


def exact_regions(model: LoadedModel, path: Path, layer: str | None, cache: Path) -> RegionEvidence:
    """Stage 1 for ``path`` plus the exact Score-CAM scores, from ``cache`` when they are there."""
    evidence = capture_evidence(model, [load_image(path)], layer=layer)[0]
    file = cache / f"{model.name.replace(':', '_')}-{evidence.layer}-{path.stem}.pt"
    if file.exists():
        kept = torch.load(file)
        if kept["target"] == evidence.target and len(kept["scores"]) == len(evidence.activations):
            flat = int(flat_channels(evidence.activations[None]).sum())
            return RegionEvidence(gradient=evidence, region_method="scorecam", top_k=None,
                                  region_scores=kept["scores"], baseline_probability=kept["baseline_probability"],
                                  masked_passes=len(kept["scores"]) - flat, flat_channels=flat, scorecam_s=0.0)
    regions = score_regions(model, [evidence])[0]
    cache.mkdir(parents=True, exist_ok=True)
    torch.save({"scores": regions.region_scores, "target": evidence.target,
                "baseline_probability": regions.baseline_probability}, file)
    return regions


def static_order(priority: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """The non-flat channels by descending ``priority``, ties by channel index."""
    order = torch.sort(torch.where(flat, float("-inf"), priority), descending=True, stable=True).indices
    return order[:int((~flat).sum())]


def refit_order(regions: RegionEvidence, flat: torch.Tensor, every: int) -> torch.Tensor:
    """The non-flat channels in the order an anytime run with :func:`refit_priority` would score
    them: ``every`` channels at a time, each time the best of the re-predicted priorities."""
    a, g, scores = regions.activations[None], regions.gradients[None], regions.region_scores[None]
    scored = flat[None].clone()
    priority = channel_priority(a, g)[0]
    order: list[int] = []
    while len(order) < int((~flat).sum()):
        chosen = static_order(priority.masked_fill(scored[0], float("-inf")), scored[0])[:every]
        order += chosen.tolist()
        scored[0, chosen] = True
        priority = refit_priority(a, g, scores, scored)[0]
    return torch.tensor(order)


def partial_scores(scores: torch.Tensor, order: torch.Tensor, count: int) -> torch.Tensor:
    """METHOD.md's partial scores after the first ``count`` channels of ``order`` (the non-flat
    ones): those and the flat channels keep their exact scores, the rest ``−inf``."""
    partial = scores.clone()
    partial[order[count:]] = float("-inf")
    return partial


def fusion_map(model: LoadedModel, regions: RegionEvidence, scores: torch.Tensor) -> np.ndarray:
    """The Fusion-CAM map (default parameters) drawn from ``scores``; ``_region=[]`` drops the
    exact evidence's memoised region map."""
    partial = dataclasses.replace(regions, region_scores=scores, probabilities={}, scoring_passes=0, _region=[])
    return derive(model, [partial], FusionParams())[0].maps["fusion"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=50)
    parser.add_argument("--images-dir", type=Path, default=SAMPLE)
    parser.add_argument("--step", type=int, default=10, help="every STEP-th file (default 10)")
    parser.add_argument("--offset", type=int, default=0, help="start at the OFFSET-th file (default 0)")
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--layer", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/anytime-cache"))
    parser.add_argument("--orders", default=",".join((*ORDERS, REFIT, ORACLE)),
                        help="orders for the Score-CAM table (default all)")
    parser.add_argument("--fusion-orders", default=f"gradcam,{DEFAULT_ORDER}",
                        help="orders for the Fusion-CAM table (4 scoring forwards per image and fraction), 'all', "
                             "or '' for none")
    parser.add_argument("--fractions", default="0.05,0.1,0.25,0.5")
    parser.add_argument("--refit-every", type=int, default=16,
                        help="the refit order re-predicts the scores after every N channels (default 16)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    orders = [o for o in args.orders.split(",") if o]
    fusion_orders = orders if args.fusion_orders == "all" else [o for o in args.fusion_orders.split(",") if o]
    for name in {*orders, *fusion_orders} - {*ORDERS, REFIT, ORACLE}:
        parser.error(f"unknown order {name!r}; choose from {', '.join((*ORDERS, REFIT, ORACLE))}")
    fractions = [float(f) for f in args.fractions.split(",")]
    if not orders or any(not 0 < f <= 1 for f in fractions):
        parser.error("--orders needs at least one order and every fraction must lie in (0, 1]")
    paths = image_paths(args.images_dir, args.images, args.step, args.offset)
    if not paths:
        parser.error(f"no images in {args.images_dir}")

    model = load_model(args.model, device=args.device)
    region_corr = {o: {f: [] for f in fractions} for o in orders}
    fusion_corr = {o: {f: [] for f in fractions} for o in fusion_orders}
    spearman: dict[str, list[float]] = {o: [] for o in orders}
    keff = []
    started = time.perf_counter()
    for index, path in enumerate(paths, 1):
        regions = exact_regions(model, path, args.layer, args.cache)
        a, g, scores = regions.activations, regions.gradients, regions.region_scores
        size = tuple(regions.x.shape[-2:])
        flat = flat_channels(a[None])[0]
        keff.append(int((~flat).sum()))
        exact = region_map(a[None], scores[None], size)[0]
        exact_fusion = fusion_map(model, regions, scores) if fusion_orders else None
        for order in orders:
            if order == REFIT:
                sequence = refit_order(regions, flat, args.refit_every)
                priority = torch.zeros_like(scores).index_put_((sequence,), -torch.arange(len(sequence)).float())
            else:
                priority = scores.clone() if order == ORACLE else channel_priority(a[None], g[None], order)[0]
                sequence = static_order(priority, flat)
            ranks = [p[~flat].argsort().argsort().numpy() for p in (priority, scores)]
            spearman[order].append(correlation(*ranks))
            for f in fractions:
                partial = partial_scores(scores, sequence, math.ceil(f * keff[-1]))
                region_corr[order][f].append(correlation(region_map(a[None], partial[None], size)[0], exact))
                if order in fusion_orders:
                    fusion_corr[order][f].append(correlation(fusion_map(model, regions, partial), exact_fusion))
        print(f"[{index}/{len(paths)}] {path.name}: K_eff {keff[-1]}, {time.perf_counter() - started:.0f} s",
              file=sys.stderr, flush=True)

    print(f"\n{len(paths)} images of {args.images_dir.name} (every {args.step}th from the {args.offset}th), "
          f"{args.model}, "
          f"layer {regions.layer}, top-1 class; K_eff {min(keff)}–{max(keff)} (mean {np.mean(keff):.0f}) "
          f"non-flat channels of {len(scores)}. Pearson correlation with the exact map, mean / min.\n")
    print(table("Score-CAM", region_corr, fractions, spearman))
    if fusion_orders:
        print()
        print(table("Fusion-CAM", fusion_corr, fractions))


def table(title: str, corr: dict[str, dict[float, list[float]]], fractions: list[float],
          spearman: dict[str, list[float]] | None = None) -> str:
    """A Markdown table: one row per order, one column per fraction of the masked passes."""
    head = f"| {title}: order |" + (" spearman |" if spearman else "")
    head += "".join(f" {f:.0%} |" for f in fractions)
    rule = "|---|" + ("---|" if spearman else "") + "---|" * len(fractions)
    rows = [head, rule]
    for order, per in corr.items():
        name = f"{order} (not available)" if order == ORACLE else order
        cells = f" {np.mean(spearman[order]):.2f} |" if spearman else ""
        cells += "".join(f" {np.mean(v):.3f} / {np.min(v):.3f} |" for v in per.values())
        rows.append(f"| {name} |{cells}")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
