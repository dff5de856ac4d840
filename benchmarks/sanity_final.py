"""One point of the cascading sanity check over many images: every map of each image against its
map after the first ``--step`` randomisation steps (default: all of them, the fully re-initialised
model), nothing in between.

The cascading check's step ``k`` is the same model (``fusioncam.sanity.randomized_models`` with the
same seed), so this is its ``k``-th value (up to float rounding) at ``2`` instead of ``steps + 1``
explanations per image — what makes Score-CAM and Fusion-CAM affordable over several images on a
CPU. Writes one JSON line per image (``--out``), and prints a Markdown table.

    python benchmarks/sanity_final.py --images 10 --out results/sanity_final.jsonl
    python benchmarks/sanity_final.py --images 10 --step 4 --out results/sanity_step4.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam import load_image, load_model
from fusioncam.explain import FusionParams
from fusioncam.sanity import METHODS, randomization_steps, randomized_models, spearman, ssim, stage_maps

SAMPLE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "imagenet-sample"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--folder", type=Path, default=SAMPLE, help="images (default: the ImageNet sample)")
    parser.add_argument("--images", type=int, default=10, help="the first N images by name")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step", type=int, default=None, help="compare after this many steps (default: all)")
    parser.add_argument("--out", type=Path, required=True, help="JSON lines, one per image (appended; resumed)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    model = load_model(args.model, device="cpu")
    steps = randomization_steps(model)[:args.step]
    done = {json.loads(line)["file"] for line in args.out.read_text().splitlines()} if args.out.exists() else set()
    params = FusionParams()
    for path in sorted(args.folder.iterdir())[:args.images]:
        if path.name in done:
            continue
        started = time.perf_counter()
        image = load_image(path)
        gradient, original = stage_maps(model, image, None, None, "mean", methods, params, {})
        *_, (_, randomised) = randomized_models(model, steps, "cascading", args.seed)   # steps 1…k applied
        _, final = stage_maps(randomised, image, gradient.target, gradient.layer, "mean", methods, params, {})
        record = {"file": path.name, "target": gradient.target, "randomised": steps, "seed": args.seed,
                  "spearman": {m: spearman(original[m], final[m]) for m in methods},
                  "ssim": {m: ssim(original[m], final[m]) for m in methods},
                  "seconds": round(time.perf_counter() - started, 1)}
        with args.out.open("a") as stream:
            stream.write(json.dumps(record) + "\n")
        print(path.name, record["seconds"], "s", {m: round(v, 3) for m, v in record["spearman"].items()}, flush=True)
    records = [json.loads(line) for line in args.out.read_text().splitlines()]
    print(f"\n| Method | Images | Spearman after {steps[-1]} (mean ± sd) | range | below 0.5 | SSIM (mean ± sd) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for m in methods:
        rho = np.array([r["spearman"][m] for r in records])
        structural = np.array([r["ssim"][m] for r in records])
        print(f"| {m} | {len(rho)} | {rho.mean():+.3f} ± {rho.std(ddof=1) if len(rho) > 1 else 0:.3f} | "
              f"{rho.min():+.2f} … {rho.max():+.2f} | {int((rho < 0.5).sum())}/{len(rho)} | "
              f"{structural.mean():.3f} ± {structural.std(ddof=1) if len(rho) > 1 else 0:.3f} |")
    print(f"\n{np.mean([r['seconds'] for r in records]):.0f} s per image (mean; shared machine)")


if __name__ == "__main__":
    main()
