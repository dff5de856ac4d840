"""Score-CAM / Fusion-CAM speed, side by side with the published ways, in one process.

    python benchmarks/scorecam.py [--model M] [--layer L] [--images N] [--device cpu|cuda]
                                  [--pretrained | --random] [--precision bf16 ...]

On the same images and layer it times our exact Score-CAM (the library path), our whole
Fusion-CAM, pytorch-grad-cam's ScoreCAM, a one-forward-per-channel loop, and the model's peak
throughput, which gives the lower bound ``(K_eff + 1) / throughput`` for the masked passes.
Every map is correlated with ours, so a speed-up cannot hide a different answer. Then the
re-fusion timings, the top-k mode and the reduced-precision modes. Only same-run ratios count.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import correlation, grad_cam_scorecam, peak_memory, per_channel_loop, timed

from fusioncam import explain, load_model
from fusioncam.backend import auto_chunk_size
from fusioncam.explain import Evidence, capture_evidence, score_regions
from fusioncam.images import load_image
from fusioncam.metrics import score_maps
from fusioncam.models import LoadedModel
from fusioncam.region import region_map, score_channels

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"
BATCHES = (1, 2, 4, 8, 16, 32)


def image_paths(count: int) -> list[Path]:
    """``count`` images spread over the ImageNet sample when present, else the bundled assets."""
    folder = SAMPLE if SAMPLE.is_dir() else ROOT / "assets"
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def throughput(module: torch.nn.Module, shape: tuple[int, ...], device: torch.device, batch: int,
               layout: torch.memory_format, images: int = 32, repeats: int = 2) -> float:
    """Best-of-``repeats`` images per second of inference forwards at ``batch``."""
    x = torch.randn((batch, *shape), device=device).contiguous(memory_format=layout)
    rounds = max(1, images // batch)
    best = float("inf")
    with torch.inference_mode():
        module(x)
        for _ in range(repeats):
            seconds, _ = timed(lambda: [module(x) for _ in range(rounds)], device)
            best = min(best, seconds / (rounds * batch))
    return 1 / best


def peak_throughput(model: LoadedModel, device: torch.device) -> dict[str, dict[int, float]]:
    """Images/s per batch size for the default layout and ``channels_last``."""
    shape = (3, *model.input_size)
    layouts = {"default": torch.contiguous_format, "channels_last": torch.channels_last}
    table: dict[str, dict[int, float]] = {}
    for name, layout in layouts.items():
        module = copy.deepcopy(model.module).to(memory_format=layout)
        table[name] = {b: throughput(module, shape, device, b, layout) for b in BATCHES}
        print(f"  throughput {name}: " + ", ".join(f"b{b} {v:.0f}/s" for b, v in table[name].items()),
              flush=True)
    return table


def ours_scorecam(model: LoadedModel, e: Evidence, chunk: int | None) -> np.ndarray:
    score_regions(model, [e], chunk_size=chunk)
    return e.region_map().numpy()


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model = load_model(args.model, device=args.device, pretrained=args.pretrained)
    layer_name, layer = model.resolve_layer(args.layer)
    paths = image_paths(args.images)
    chunk = args.chunk or auto_chunk_size(device, (3, *model.input_size), model)
    print(f"# {model.name} · layer {layer_name} · {len(paths)} images from {paths[0].parent} · "
          f"{device} · chunk {chunk} · torch {torch.__version__} · {torch.get_num_threads()} threads", flush=True)
    rows: dict[str, dict[str, list[float]]] = {}

    def record(name: str, seconds: float, passes: int, memory: int, corr: float) -> None:
        print(f"    {name}: {seconds:.2f} s, {passes} passes, corr. {corr:.4f}", flush=True)
        row = rows.setdefault(name, {"s": [], "passes": [], "mem": [], "corr": []})
        for key, value in zip(("s", "passes", "mem", "corr"), (seconds, passes, memory, corr), strict=True):
            row[key].append(value)

    refusion: dict[str, list[float]] = {}
    topk: dict[int, dict[str, list[float]]] = {}
    for index, path in enumerate(paths):
        image = load_image(path)
        e = capture_evidence(model, [image], layer=layer_name)[0]
        x, xb = e.x[None].to(device), e.baseline[None].to(device)
        acts = e.activations.to(device)
        with peak_memory(device) as peak:
            seconds, ours = timed(lambda e=e: ours_scorecam(model, e, chunk), device)
        passes, k_total = e.masked_passes, len(e.activations)
        record("ours: exact Score-CAM", seconds, passes + 1, peak(), 1.0)
        with peak_memory(device) as peak:
            seconds, ex = timed(lambda image=image: explain(model, image, layer=layer_name, chunk_size=args.chunk),
                                device)
        total_passes = ex.report["forward_passes"]["total"]
        record("ours: Fusion-CAM (full explain)", seconds, total_passes, peak(), correlation(ex.maps["scorecam"], ours))
        if not args.skip_peers:
            with peak_memory(device) as peak:
                seconds, theirs = timed(lambda x=x, e=e: grad_cam_scorecam(model.module, layer, x, e.target), device)
            record("pytorch-grad-cam ScoreCAM (batch 16)", seconds, k_total, peak(), correlation(theirs, ours))
            with peak_memory(device) as peak:
                seconds, loop = timed(lambda x=x, xb=xb, acts=acts, e=e: per_channel_loop(
                    model.module, x, xb, acts, e.target), device)
            record("per-channel loop (batch 1)", seconds, k_total, peak(), correlation(loop, ours))
        for precision in args.precision:
            with peak_memory(device) as peak:
                seconds, region = timed(lambda x=x, xb=xb, acts=acts, e=e, p=precision: score_channels(
                    model, x, xb, acts[None], torch.tensor([e.target]), chunk, precision=p), device)
            cam = region_map(acts[None], region.scores, tuple(x.shape[-2:]))[0].cpu().numpy()
            record(f"ours: Score-CAM {precision} autocast", seconds, passes + 1, peak(), correlation(cam, ours))
        time_refusion(model, ex, refusion, index, device)
        approximations = {}
        for k in args.top_k:
            seconds, cam = timed(lambda e=e, k=k: (score_regions(model, [e], "scorecam-topk", k, chunk),
                                                   e.region_map().numpy())[1], device)
            entry = topk.setdefault(k, {"s": [], "corr": [], "drop": [], "deletion": [], "insertion": []})
            entry["s"].append(seconds)
            entry["corr"].append(correlation(cam, ours))
            approximations[k] = cam
        if approximations:
            record_topk_faithfulness(model, e, ours, approximations, topk)
        print(f"  image {index + 1}/{len(paths)} {path.name}: {passes} masked passes "
              f"({k_total - passes} of {k_total} channels flat)", flush=True)

    print("  measuring peak throughput…", flush=True)
    table = peak_throughput(model, device)
    report(args, model, layer_name, device, chunk, rows, table, refusion, topk)


def record_topk_faithfulness(model: LoadedModel, e: Evidence, exact: np.ndarray, approximations: dict[int, np.ndarray],
                             topk: dict[int, dict[str, list[float]]]) -> None:
    """What the top-k approximation changes in the faithfulness metrics: top-k minus exact, per image,
    for Average Drop (percentage points), Deletion AUC and Insertion AUC (112 steps)."""
    maps = {"exact": exact, **{f"k{k}": cam for k, cam in approximations.items()}}
    scores = score_maps(model, e.x, maps, e.target, e.baseline)
    reference = scores["exact"]
    for k in approximations:
        approx = scores[f"k{k}"]
        topk[k]["drop"].append(100 * (approx.drop - reference.drop))
        topk[k]["deletion"].append(approx.deletion_auc - reference.deletion_auc)
        topk[k]["insertion"].append(approx.insertion_auc - reference.insertion_auc)


def time_refusion(model: LoadedModel, ex, refusion: dict[str, list[float]], index: int,
                  device: torch.device) -> None:
    """Re-fusion from kept evidence, and one batch-1 forward to compare the θ change with."""
    x = ex.evidence.x[None].to(device)
    with torch.inference_mode():
        model(x)
        forward, _ = timed(lambda: model(x), device)
    cases = {"strength change": lambda: ex.refuse(strength=0.5 + 0.1 * index),
             "weight-mode change": lambda: ex.refuse(weights="raw" if index % 2 == 0 else "normalized"),
             "θ change": lambda: ex.refuse(theta=20 + index)}
    refusion.setdefault("one batch-1 forward", []).append(forward)
    for name, call in cases.items():
        refusion.setdefault(name, []).append(timed(call, device)[0])


def report(args, model: LoadedModel, layer: str, device: torch.device, chunk: int,
           rows: dict[str, dict[str, list[float]]], table: dict[str, dict[int, float]],
           refusion: dict[str, list[float]], topk: dict[int, dict[str, list[float]]]) -> None:
    """The markdown tables."""
    median = statistics.median
    ours = median(rows["ours: exact Score-CAM"]["s"])
    best_layout, best = max(((name, (b, v)) for name, per in table.items() for b, v in per.items()),
                            key=lambda item: item[1][1])
    k_eff = median(rows["ours: exact Score-CAM"]["passes"])
    bound = k_eff / best[1]
    where = device_name(device)
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n## {model.name}, layer `{layer}`, {args.images} images, {where}")
    print(f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} threads · chunk {chunk}"
          f" · weights {'pretrained' if args.pretrained else 'random'} · load average at end {load}\n")
    print("| method | median s | × ours | masked passes | peak memory MB | corr. with ours |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        print(f"| {name} | {median(row['s']):.2f} | {median(row['s']) / ours:.2f} | {median(row['passes']):.0f} "
              f"| {median(row['mem']) / 2**20:.0f} | {min(row['corr']):.4f} |")
    print(f"| lower bound: (K_eff + 1) / peak throughput | {bound:.2f} | {bound / ours:.2f} | {k_eff:.0f} | | |")
    print(f"\nPeak throughput {best[1]:.0f} images/s ({best_layout}, batch {best[0]}); ours is "
          f"{ours / bound:.2f}× the lower bound. Correlations are the minimum over images.\n")
    print("| layout | " + " | ".join(f"batch {b}" for b in BATCHES) + " |")
    print("|---|" + "---:|" * len(BATCHES))
    for name, per in table.items():
        print(f"| {name} | " + " | ".join(f"{per[b]:.0f}" for b in BATCHES) + " |")
    print("\n| re-fusion from kept evidence | median ms |\n|---|---:|")
    for name, values in refusion.items():
        print(f"| {name} | {1000 * median(values):.1f} |")
    if topk:
        print("\n| top-k mode | median s | × exact | min corr. with exact | Δ Average Drop (pp) | Δ Deletion AUC "
              "| Δ Insertion AUC |\n|---|---:|---:|---:|---:|---:|---:|")
        mean = statistics.fmean
        for k, entry in topk.items():
            seconds = median(entry["s"])
            print(f"| k = {k} | {seconds:.2f} | {seconds / ours:.2f} | {min(entry['corr']):.4f} "
                  f"| {mean(entry['drop']):+.2f} | {mean(entry['deletion']):+.4f} | {mean(entry['insertion']):+.4f} |")
        print("\nΔ: mean over images of top-k minus exact Score-CAM (lower is better for Average Drop and "
              "Deletion, higher for Insertion).")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return f"{cpu}, {os.cpu_count()} cores"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--layer", default=None, help="target layer (default: the model's)")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=("cpu", "cuda"))
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--pretrained", dest="pretrained", action="store_true", default=True)
    weights.add_argument("--random", dest="pretrained", action="store_false",
                         help="random weights: no download (speed does not depend on weights)")
    parser.add_argument("--chunk", type=int, default=None, help="masked inputs per forward (default: automatic)")
    parser.add_argument("--precision", nargs="*", default=["bf16"], choices=("bf16", "fp16"),
                        help="reduced-precision variants to report (fidelity and time)")
    parser.add_argument("--top-k", nargs="*", type=int, default=[64, 128, 256])
    parser.add_argument("--skip-peers", action="store_true", help="skip pytorch-grad-cam and the per-channel loop")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
