"""Exact Score-CAM time per image: ViT-Tiny (token layer) against the bundled EfficientNet-Lite0.

Both through the library path (``capture_evidence`` + ``score_regions``, eager: no compiled
graph), at each model's default layer, on the same images, alternating model by image so that
load changes on a shared machine hit both alike. ViT-Tiny has random weights (nothing is
downloaded; speed does not depend on the weights, the flat-channel count does: it is reported).

    nice -n 10 python benchmarks/vit_scorecam.py --images 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam.explain import capture_evidence, score_regions
from fusioncam.images import load_image
from fusioncam.models import LoadedModel, load_model

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"


def scorecam_seconds(model: LoadedModel, path: Path) -> tuple[float, int, int]:
    """``(seconds, masked passes, channels)`` of exact Score-CAM for one image (stage 2 only)."""
    [evidence] = capture_evidence(model, [load_image(path)])
    started = time.perf_counter()
    [region] = score_regions(model, [evidence])
    return time.perf_counter() - started, region.masked_passes, int(evidence.activations.shape[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(SAMPLE.glob("*.jpg"))[::max(1, 500 // args.images)][:args.images] or sorted(
        (ROOT / "assets").glob("*.jpg"))[:args.images]
    vit = load_model("timm:vit_tiny_patch16_224", device="cpu", pretrained=False, compile=False)
    models = {"efficientnet_lite0": load_model("efficientnet_lite0", device="cpu", compile=False), "vit_tiny": vit}
    runs: dict[str, list[tuple[float, int, int]]] = {name: [] for name in models}
    scorecam_seconds(vit, files[0])                         # warm-up of both
    scorecam_seconds(models["efficientnet_lite0"], files[0])
    for path in files:
        for name, model in models.items():
            runs[name].append(scorecam_seconds(model, path))
    print(f"{len(files)} images, {args.threads} threads, CPU, torch {torch.__version__}")
    for name, model in models.items():
        seconds = statistics.median(r[0] for r in runs[name])
        passes = statistics.median(r[1] for r in runs[name])
        print(f"{name:20s} layer {model.default_layer:16s} K = {runs[name][0][2]:4d}  masked passes {passes:6.0f}  "
              f"Score-CAM {seconds:6.2f} s/image (median)  {passes / seconds:6.1f} passes/s")


if __name__ == "__main__":
    main()
