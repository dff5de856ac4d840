"""A batch against a loop: ``explain(model, [N images])`` in one call vs the same images one at a time,
on the bundled model, both warm, in one process, alternating which goes first (so a changing load
on a shared machine hits both alike). Prints images/s of each, their ratio, and the largest map
difference between the two (float32: within 1e-5).

    python benchmarks/batch.py                      # 6 images (assets and their mirrors), CPU
    python benchmarks/batch.py --images 32 --device cuda --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from fusioncam import explain, load_model
from fusioncam.explain import MAP_NAMES

ROOT = Path(__file__).resolve().parent.parent


def images(count: int) -> list[Image.Image]:
    """``count`` images: the assets, then their mirrors, then crops of them."""
    base = [Image.open(path).convert("RGB") for path in sorted((ROOT / "assets").glob("*.jpg"))]
    variants = base + [ImageOps.mirror(image) for image in base]
    variants += [image.crop((0, 0, image.width * 3 // 4, image.height * 3 // 4)) for image in variants]
    return [variants[i % len(variants)] for i in range(count)]


def timed(work) -> tuple[float, object]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    result = work()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - started, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=6)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="the compiled scoring network (default eager)")
    args = parser.parse_args()
    model = load_model("efficientnet_lite0", device=args.device, compile=args.compile)
    model.wait_warm()
    batch = images(args.images)
    explain(model, batch[:2])                      # warm: the batch's own shapes and the loop's
    explain(model, batch[0])
    batch_s, loop_s, worst = [], [], 0.0
    for repeat in range(args.repeats):
        order = ("batch", "loop") if repeat % 2 == 0 else ("loop", "batch")
        for kind in order:
            if kind == "batch":
                seconds, together = timed(lambda: explain(model, batch))
                batch_s.append(seconds)
            else:
                seconds, alone = timed(lambda: [explain(model, image) for image in batch])
                loop_s.append(seconds)
        worst = max(worst, max(float(np.abs(a.maps[name] - b.maps[name]).max())
                               for a, b in zip(together, alone, strict=True) for name in MAP_NAMES))
    batch_rate = args.images / statistics.median(batch_s)
    loop_rate = args.images / statistics.median(loop_s)
    print(f"# batch vs loop · {args.images} images · {args.device} · torch threads {torch.get_num_threads()} · "
          f"{'compiled' if args.compile else 'eager'} · {args.repeats} repeats (warm)")
    print("| run | median s | images/s |\n|---|---:|---:|")
    print(f"| one call, {args.images} images (warm) | {statistics.median(batch_s):.2f} | {batch_rate:.2f} |")
    print(f"| one at a time (warm) | {statistics.median(loop_s):.2f} | {loop_rate:.2f} |")
    print(f"\nbatch / loop throughput: {batch_rate / loop_rate:.2f}× · largest map difference {worst:.1e}")


if __name__ == "__main__":
    main()
