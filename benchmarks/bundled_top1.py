"""Top-1 accuracy of the bundled models on the 500-image ImageNet sample, per preprocessing.

Each image's file name starts with its class index (``../shared/data/imagenet-sample/``, never
copied). The images are read as the library reads them (``load_image``) and prepared by
``LoadedModel.preprocess`` with the model's geometry, or with each candidate geometry under
``--sweep`` (how the bundled preprocessing was chosen). Accuracy only: nothing is timed.

    nice -n 10 python benchmarks/bundled_top1.py                  # the bundled preprocessing
    nice -n 10 python benchmarks/bundled_top1.py --sweep          # plus resize/crop/interpolation variants
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam.images import Geometry, load_image
from fusioncam.models import BUNDLED_MODELS, LoadedModel, load_bundled

SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "imagenet-sample"


def variants(model: LoadedModel) -> dict[str, Geometry]:
    """The bundled geometry plus plain resizes and centre crops by the TensorFlow EfficientNet
    recipe (crop fraction ``size / (size + 32)``), bilinear and bicubic, and a bicubic 0.875 crop."""
    size = model.input_size[0]
    found = {"bundled": model.geometry}
    for interpolation in ("bilinear", "bicubic"):
        found[f"resize {interpolation}"] = Geometry("squash", None, interpolation)
        found[f"crop {size}/{size + 32} {interpolation}"] = Geometry.centre_crop(
            model.input_size, size / (size + 32), interpolation)
    found["crop 0.875 bicubic"] = Geometry.centre_crop(model.input_size, 0.875, "bicubic")
    return {label: geometry for label, geometry in found.items()
            if label == "bundled" or geometry != model.geometry}


def top1(model: LoadedModel, images: list[tuple[int, Image.Image]], batch: int = 25) -> float:
    """The fraction of ``(label, image)`` pairs whose top-1 class is the label."""
    right = 0
    for start in range(0, len(images), batch):
        part = images[start:start + batch]
        x = torch.stack([model.preprocess(image)[0] for _, image in part])
        with torch.inference_mode():
            predicted = model.module(x).argmax(1).tolist()
        right += sum(p == label for p, (label, _) in zip(predicted, part, strict=True))
    return right / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(BUNDLED_MODELS), choices=list(BUNDLED_MODELS))
    parser.add_argument("--sweep", action="store_true", help="also score the candidate geometries")
    parser.add_argument("--limit", type=int, default=None, help="first N images only")
    parser.add_argument("--threads", type=int, default=1, help="1: two threads wait on each other on a busy machine")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    files = sorted(SAMPLE.glob("*.jpg"))[:args.limit]
    if not files:
        raise SystemExit(f"no images in {SAMPLE}")
    images = [(int(path.name.split("_", 1)[0]), load_image(path)) for path in files]  # decoded once
    print(f"{len(files)} images from {SAMPLE}")
    for name in args.models:
        model = load_bundled(name)
        geometries = variants(model) if args.sweep else {"bundled": model.geometry}
        for label, geometry in geometries.items():
            model.geometry = geometry
            accuracy = top1(model, images)
            print(f"{name:20s} {model.input_size[0]}px  {label:28s} {dataclasses.astuple(geometry)}  "
                  f"top-1 {accuracy:.1%}", flush=True)


if __name__ == "__main__":
    main()
