"""Does a long ``evaluate`` keep its memory flat? Host RSS (and GPU memory) every 100 images.

    python benchmarks/evaluate_memory.py [--n 1000] [--images DIR] [--device cpu|cuda]
                                         [--methods gradcam] [--metrics ad,ic] [--every 100]

Runs :func:`fusioncam.evaluate.run_evaluate` itself (the CLI's path: the JSON rewritten after
every image, the records kept) over ``--n`` images: the files of ``--images DIR``, or the asset
images, cycled under new names through symbolic links in a temporary folder. After every
``--every`` images it samples the resident set (``VmRSS``) and, on a GPU,
``torch.cuda.memory_allocated``, prints the samples and their least-squares slope in MB per 100
images, from the second sample on (the first pays the one-time warm-up).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam import evaluate
from fusioncam.evaluate import IMAGE_SUFFIXES, parse_metrics

ASSETS = Path(__file__).resolve().parent.parent / "assets"


def rss_mb() -> float:
    """This process's resident set, in MB (Linux)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def slope_per_100(images: list[int], values: list[float]) -> float:
    """Least-squares slope of ``values`` over ``images``, per 100 images."""
    return float(np.polyfit(images, values, 1)[0] * 100) if len(images) >= 2 else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--images", type=Path, default=ASSETS, help="a folder of images, cycled (default: assets/)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--methods", default="gradcam")
    parser.add_argument("--metrics", default="ad,ic")
    parser.add_argument("--every", type=int, default=100)
    args = parser.parse_args()
    sources = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    samples: list[tuple[int, float, float, float]] = []     # images, seconds, RSS MB, GPU MB
    count = [0]
    started = time.perf_counter()
    record = evaluate._record

    def sampled(*a, **k):
        result = record(*a, **k)
        count[0] += 1
        if count[0] % args.every == 0:
            gpu = torch.cuda.memory_allocated() / 2**20 if args.device == "cuda" else 0.0
            samples.append((count[0], time.perf_counter() - started, rss_mb(), gpu))
        return result

    evaluate._record = sampled
    with tempfile.TemporaryDirectory() as folder:
        for i in range(args.n):
            source = sources[i % len(sources)]
            (Path(folder) / f"image{i:06d}{source.suffix.lower()}").symlink_to(source.resolve())
        evaluate.run_evaluate(Path(folder), Path(folder) / "results.json", methods=args.methods.split(","),
                              metrics=parse_metrics(args.metrics), device=args.device)
    print(f"\n{args.n} images ({len(sources)} distinct, cycled), methods {args.methods}, metrics {args.metrics}, "
          f"device {args.device}, {torch.get_num_threads()} threads\n")
    print("| images | seconds | host RSS (MB) | GPU allocated (MB) |")
    print("| ---: | ---: | ---: | ---: |")
    for images, seconds, rss, gpu in samples:
        print(f"| {images} | {seconds:.0f} | {rss:.1f} | {gpu:.1f} |")
    tail = samples[1:]
    print(f"\nslope from image {tail[0][0] if tail else '-'} on: host RSS "
          f"{slope_per_100([s[0] for s in tail], [s[2] for s in tail]):+.2f} MB per 100 images, GPU "
          f"{slope_per_100([s[0] for s in tail], [s[3] for s in tail]):+.2f} MB per 100 images")


if __name__ == "__main__":
    main()
