"""Score-CAM / Fusion-CAM speed, side by side with the published ways, in one process.

    python benchmarks/scorecam.py [--model M] [--layer L] [--images N] [--device cpu|cuda]
                                  [--pretrained | --random] [--precision bf16 ...] [--no-compile]

On the same images and layer it times our exact Score-CAM (the library path) eager and through the
compiled scoring network (fusioncam/compiled.py), our whole Fusion-CAM, pytorch-grad-cam's ScoreCAM,
a one-forward-per-channel loop, and the model's peak throughput eager and compiled, which gives the
lower bound ``(K_eff + 1) / throughput`` for the masked passes at the fastest forward found. Every
map is compared with our eager exact map (correlation and max |Δ|), so a speed-up cannot hide a
different answer; the approximate modes (reduced precision, top-k) also report the change they make
in Average Drop, Deletion and Insertion. Then the re-fusion timings. Only same-run ratios count.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peers import correlation, grad_cam_scorecam, peak_memory, per_channel_loop, timed

from fusioncam import Explanation, explain, load_model
from fusioncam.allocator import tune_host_allocator
from fusioncam.backend import auto_chunk_size, prefers_channels_last
from fusioncam.explain import GradientEvidence, RegionEvidence, capture_evidence, score_regions
from fusioncam.images import load_image
from fusioncam.metrics import score_maps
from fusioncam.models import LoadedModel
from fusioncam.region import region_map, score_channels

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT.parent / "shared" / "data" / "imagenet-sample"
BATCHES = (1, 2, 4, 8, 16, 32)
EXACT = "ours: exact Score-CAM"


def image_paths(count: int, folder: Path | None = None) -> list[Path]:
    """``count`` images spread over ``folder`` (default: the ImageNet sample when present, else the
    bundled assets)."""
    folder = folder or (SAMPLE if SAMPLE.is_dir() else ROOT / "assets")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    step = max(1, len(paths) // count)
    return paths[::step][:count]


def throughput(forward: Callable[[torch.Tensor], object], shape: tuple[int, ...], device: torch.device,
               batch: int, layout: torch.memory_format, images: int = 32, repeats: int = 2) -> float:
    """Best-of-``repeats`` images per second of inference forwards at ``batch``."""
    with torch.inference_mode():
        x = torch.randn((batch, *shape), device=device).contiguous(memory_format=layout)
    rounds = max(1, images // batch)
    best = float("inf")
    with torch.inference_mode():
        forward(x)
        for _ in range(repeats):
            seconds, _ = timed(lambda: [forward(x) for _ in range(rounds)], device)
            best = min(best, seconds / (rounds * batch))
    return 1 / best


def peak_throughput(model: LoadedModel, device: torch.device, batches: list[int],
                    compiled_batches: list[int]) -> dict[str, dict[int, float]]:
    """Images/s per batch size: eager in the default layout and ``channels_last`` at ``batches``, and
    the compiled scoring network (the model's own layout) at ``compiled_batches``."""
    shape = (3, *model.input_size)
    layouts = {"default": torch.contiguous_format, "channels_last": torch.channels_last}
    table: dict[str, dict[int, float]] = {}
    for name, layout in layouts.items():
        module = copy.deepcopy(model.module).to(memory_format=layout)
        table[name] = {b: throughput(module, shape, device, b, layout) for b in batches}
    if compiled_batches:
        layout = torch.channels_last if prefers_channels_last(model) else torch.contiguous_format
        table["compiled"] = {}
        for b in compiled_batches:
            build_graph(model, b, "fp32", device)
            with compiled_scoring(model):
                table["compiled"][b] = throughput(lambda x, b=b: model.score(x, b), shape, device, b, layout)
    for name, per in table.items():
        print(f"  throughput {name}: " + ", ".join(f"b{b} {v:.0f}/s" for b, v in per.items()), flush=True)
    return table


def paired_speedup(model: LoadedModel, device: torch.device, batch: int, pairs: int = 20,
                   block: int = 8) -> list[float]:
    """Eager over compiled time of ``block`` back-to-back scoring forwards at ``batch``, measured in
    alternating blocks so that a changing load on a shared machine hits both alike: one ratio per pair.

    Blocks, not single forwards: Score-CAM runs its masked passes back to back, while alternating
    single forwards makes the eager and the compiled (frozen, prepacked) weights evict each other
    from the caches on every call. Measured here: 1.17–1.21× alternating single forwards against
    1.66× in blocks of 8, in the same process.
    """
    layout = torch.channels_last if prefers_channels_last(model) else torch.contiguous_format
    with torch.inference_mode():
        x = torch.randn((batch, 3, *model.input_size), device=device).contiguous(memory_format=layout)

    def forwards() -> None:
        for _ in range(block):
            model.score(x, batch)

    ratios = []
    for _ in range(pairs):
        with compiled_scoring(model, False):
            eager, _ = timed(forwards, device)
        with compiled_scoring(model, True):
            compiled, _ = timed(forwards, device)
        ratios.append(eager / compiled)
    return ratios


@contextlib.contextmanager
def compiled_scoring(model: LoadedModel, on: bool = True) -> Iterator[None]:
    """Score through the compiled graphs (``on``) or eagerly inside the block."""
    previous, model.compile = model.compile, on
    try:
        yield
    finally:
        model.compile = previous


def build_graph(model: LoadedModel, batch: int, precision: str, device: torch.device) -> float:
    """Start the compiled graph for ``batch`` rows at ``precision`` as a request would (one scoring
    call), wait for it, and return the seconds from that first use to a ready graph."""
    layout = torch.channels_last if prefers_channels_last(model) else torch.contiguous_format
    with torch.inference_mode():
        sample = torch.zeros((batch, 3, *model.input_size), device=device).contiguous(memory_format=layout)
    with compiled_scoring(model):
        model.score(sample, batch, precision)
    model.scorers.wait()
    if model.scorers.failure:
        raise SystemExit(f"the scoring network did not compile: {model.scorers.failure}")
    return max(seconds for key, seconds in model.scorers.ready_after_s.items()
               if key.shape[0] == batch and key.precision == precision)


def ours_scorecam(model: LoadedModel, e: GradientEvidence, chunk: int | None) -> tuple[np.ndarray, RegionEvidence]:
    region = score_regions(model, [e], chunk_size=chunk)[0]
    return region.region_map().numpy(), region


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device)
    model = load_model(args.model, device=args.device, pretrained=args.pretrained, compile=False)
    layer_name, layer = model.resolve_layer(args.layer)
    paths = image_paths(args.images, args.image_dir)
    chunk = args.chunk or auto_chunk_size(device, (3, *model.input_size), model)
    print(f"# {model.name} · layer {layer_name} · {len(paths)} images from {paths[0].parent} · "
          f"{device} · chunk {chunk} · torch {torch.__version__} · {torch.get_num_threads()} threads", flush=True)
    compile_s: dict[str, float] = {}
    if args.compile:
        for precision in dict.fromkeys(("fp32", *(args.compiled_precisions or args.precision))):
            compile_s[precision] = build_graph(model, chunk, precision, device)
            print(f"  compiled scoring network ({precision}, batch {chunk}) ready {compile_s[precision]:.1f} s "
                  "after first use", flush=True)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    rows: dict[str, dict[str, list[float]]] = {}
    refusion: dict[str, list[float]] = {}
    fidelity: dict[str, dict[str, list[float]]] = {}

    for index, path in enumerate(paths):
        image = load_image(path)
        e = capture_evidence(model, [image], layer=layer_name)[0]
        x, xb = e.x[None].to(device), e.baseline[None].to(device)
        acts = e.activations.to(device)
        with peak_memory(device) as peak:
            seconds, (exact, region) = timed(lambda e=e: ours_scorecam(model, e, chunk), device)
        passes, k_total = region.masked_passes, len(e.activations)

        def record(name: str, seconds: float, passes: int, memory: int, cam: np.ndarray,
                   exact: np.ndarray = exact) -> None:
            corr, delta = correlation(cam, exact), float(np.abs(cam - exact).max())
            print(f"    {name}: {seconds:.2f} s, {passes} passes, corr. {corr:.6f}, max |Δ| {delta:.1e}", flush=True)
            row = rows.setdefault(name, {"s": [], "passes": [], "mem": [], "corr": [], "delta": []})
            for key, value in zip(row, (seconds, passes, memory, corr, delta), strict=True):
                row[key].append(value)

        record(EXACT, seconds, passes + 1, peak(), exact)
        approximations: dict[str, np.ndarray] = {}
        timings: dict[str, float] = {}
        if args.compile:
            with compiled_scoring(model), peak_memory(device) as peak:
                seconds, (cam, _) = timed(lambda e=e: ours_scorecam(model, e, chunk), device)
            record(f"{EXACT}, compiled", seconds, passes + 1, peak(), cam)
            approximations["compiled fp32"], timings["compiled fp32"] = cam, seconds
        ex = None
        for compiled in ((False, True) if args.compile else (False,)) if args.explain else ():
            with compiled_scoring(model, compiled), peak_memory(device) as peak:
                seconds, ex = timed(lambda image=image: explain(model, image, layer=layer_name,
                                                                chunk_size=args.chunk), device)
            record("ours: Fusion-CAM (full explain)" + (", compiled" if compiled else ""), seconds,
                   ex.report["forward_passes"]["total"], peak(), ex.maps["scorecam"])
        if not args.skip_peers:
            with peak_memory(device) as peak:
                seconds, theirs = timed(lambda x=x, e=e: grad_cam_scorecam(model.module, layer, x, e.target), device)
            record("pytorch-grad-cam ScoreCAM (batch 16)", seconds, k_total, peak(), theirs)
            with peak_memory(device) as peak:
                seconds, loop = timed(lambda x=x, xb=xb, acts=acts, e=e: per_channel_loop(
                    model.module, x, xb, acts, e.target), device)
            record("per-channel loop (batch 1)", seconds, k_total, peak(), loop)
        for precision in args.precision:
            for compiled in (False, True) if precision in compile_s else (False,):
                name = f"{precision} autocast" + (", compiled" if compiled else "")
                with compiled_scoring(model, compiled), peak_memory(device) as peak:
                    seconds, scored = timed(lambda x=x, xb=xb, acts=acts, e=e, p=precision: score_channels(
                        model, x, xb, acts[None], torch.tensor([e.target]), chunk, precision=p), device)
                cam = region_map(acts[None], scored.scores, tuple(x.shape[-2:]))[0].cpu().numpy()
                record(f"ours: Score-CAM {name}", seconds, passes + 1, peak(), cam)
                approximations[name], timings[name] = cam, seconds
        for k in args.top_k:
            seconds, cam = timed(lambda e=e, k=k: score_regions(model, [e], "scorecam-topk", k, chunk)[0]
                                 .region_map().numpy(), device)
            approximations[f"top-k, k = {k}"], timings[f"top-k, k = {k}"] = cam, seconds
        if approximations:
            with compiled_scoring(model, args.compile):    # the metrics' passes are exact either way
                record_fidelity(model, e, exact, approximations, timings, rows[EXACT]["s"][-1], fidelity)
        if ex is not None:
            time_refusion(model, ex, refusion, index, device)
        print(f"  image {index + 1}/{len(paths)} {path.name}: {passes} masked passes "
              f"({k_total - passes} of {k_total} channels flat)", flush=True)

    print("  measuring peak throughput…", flush=True)
    compiled_batches = sorted({chunk, *args.compiled_batches}) if args.compile else []
    table = peak_throughput(model, device, args.batches, compiled_batches)
    paired = {b: paired_speedup(model, device, b) for b in compiled_batches}
    built = len(model.scorers.ready)
    new_graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"] - graphs
    report(args, model, layer_name, device, chunk, rows, table, refusion, fidelity, compile_s,
           new_graphs - (built - len(compile_s)), paired)


def record_fidelity(model: LoadedModel, e: GradientEvidence, exact: np.ndarray, approximations: dict[str, np.ndarray],
                    timings: dict[str, float], exact_s: float, fidelity: dict[str, dict[str, list[float]]]) -> None:
    """What each approximation changes: per image, its time over the exact map's, its correlation and
    max |Δ| with the exact map, and its Average Drop (percentage points), Deletion AUC and Insertion
    AUC (112 steps) minus the exact map's."""
    scores = score_maps(model, e.x, {"exact": exact, **approximations}, e.target, e.baseline)
    reference = scores["exact"]
    for name, cam in approximations.items():
        entry = fidelity.setdefault(name, {key: [] for key in ("ratio", "corr", "delta", "drop", "deletion",
                                                               "insertion")})
        entry["ratio"].append(timings[name] / exact_s)
        entry["corr"].append(correlation(cam, exact))
        entry["delta"].append(float(np.abs(cam - exact).max()))
        entry["drop"].append(100 * (scores[name].drop - reference.drop))
        entry["deletion"].append(scores[name].deletion_auc - reference.deletion_auc)
        entry["insertion"].append(scores[name].insertion_auc - reference.insertion_auc)


def time_refusion(model: LoadedModel, ex: Explanation, refusion: dict[str, list[float]], index: int,
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


def report(args: argparse.Namespace, model: LoadedModel, layer: str, device: torch.device, chunk: int,
           rows: dict[str, dict[str, list[float]]], table: dict[str, dict[int, float]],
           refusion: dict[str, list[float]], fidelity: dict[str, dict[str, list[float]]],
           compile_s: dict[str, float], recompiles: int, paired: dict[int, list[float]]) -> None:
    """The markdown tables."""
    median, mean = statistics.median, statistics.fmean
    ours = median(rows[EXACT]["s"])
    k_eff = median(rows[EXACT]["passes"])
    fastest = {name: max(per.items(), key=lambda item: item[1]) for name, per in table.items()}
    best_name, (best_batch, best) = max(fastest.items(), key=lambda item: item[1][1])
    eager_name, (eager_batch, eager_best) = max(((n, v) for n, v in fastest.items() if n != "compiled"),
                                                key=lambda item: item[1][1])
    bound, eager_bound = k_eff / best, k_eff / eager_best
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"\n## {model.name}, layer `{layer}`, {args.images} images, {device_name(device)}")
    print(f"{datetime.date.today()} · torch {torch.__version__} · {torch.get_num_threads()} threads · chunk {chunk}"
          f" · weights {'pretrained' if args.pretrained else 'random'} · malloc {args.allocator}"
          f" · load average at end {load}\n")
    print("| method | median s | × ours (eager) | × lower bound | masked passes | peak memory MB "
          "| min corr. with ours | max \\|Δ map\\| |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, row in rows.items():
        seconds = median(row["s"])
        print(f"| {name} | {seconds:.2f} | {seconds / ours:.2f} | {seconds / bound:.2f} | {median(row['passes']):.0f} "
              f"| {median(row['mem']) / 2**20:.0f} | {min(row['corr']):.6f} | {max(row['delta']):.1e} |")
    print(f"| lower bound: (K_eff + 1) / fastest forward | {bound:.2f} | {bound / ours:.2f} | 1.00 "
          f"| {k_eff:.0f} | | | |")
    if best_name == "compiled":
        print(f"| eager lower bound: (K_eff + 1) / fastest eager forward | {eager_bound:.2f} "
              f"| {eager_bound / ours:.2f} | {eager_bound / bound:.2f} | {k_eff:.0f} | | | |")
    print(f"\nFastest forward {best:.0f} images/s ({best_name}, batch {best_batch}); fastest eager {eager_best:.0f} "
          f"images/s ({eager_name}, batch {eager_batch}). Correlations and max |Δ| are against our eager exact map "
          "(min / max over images).")
    if compile_s:
        print("Compiled scoring network ready after first use (cold inductor cache unless --warm-cache): "
              + ", ".join(f"{p} {s:.1f} s" for p, s in compile_s.items())
              + f"; graphs compiled outside those builds (recompilations): {recompiles}.")
    for b, ratios in paired.items():
        q1, q2, q3 = statistics.quantiles(ratios, n=4)
        print(f"Compiled forward speed-up at batch {b} (eager / compiled time of 8 back-to-back forwards, "
              f"{len(ratios)} alternating pairs): median {q2:.2f}×, quartiles {q1:.2f}–{q3:.2f}×.")
    batches = sorted({b for per in table.values() for b in per})
    print("\n| images/s | " + " | ".join(f"batch {b}" for b in batches) + " |")
    print("|---|" + "---:|" * len(batches))
    for name, per in table.items():
        print(f"| {name} | " + " | ".join(f"{per[b]:.0f}" if b in per else "–" for b in batches) + " |")
    if refusion:
        print("\n| re-fusion from kept evidence | median ms |\n|---|---:|")
        for name, values in refusion.items():
            print(f"| {name} | {1000 * median(values):.1f} |")
    if fidelity:
        print("\n| approximation | median time / exact eager | min corr. with exact | max \\|Δ map\\| "
              "| Δ Average Drop (pp) | Δ Deletion AUC | Δ Insertion AUC |\n|---|---:|---:|---:|---:|---:|---:|")
        for name, entry in fidelity.items():
            print(f"| {name} | {median(entry['ratio']):.2f} | {min(entry['corr']):.6f} | {max(entry['delta']):.1e} "
                  f"| {mean(entry['drop']):+.3f} | {mean(entry['deletion']):+.5f} | {mean(entry['insertion']):+.5f} |")
        print(f"\nΔ: mean over {len(rows[EXACT]['s'])} images of the approximation minus exact Score-CAM (lower is "
              "better for Average Drop and Deletion, higher for Insertion); the metrics' own passes are exact.")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    flags = Path("/proc/cpuinfo").read_text()
    return f"{cpu}, {os.cpu_count()} cores, {'with' if 'avx512_bf16' in flags else 'no'} AVX512-BF16"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--layer", default=None, help="target layer (default: the model's)")
    parser.add_argument("--images", type=int, default=5)
    parser.add_argument("--image-dir", type=Path, default=None,
                        help="folder of images (default: ../shared/data/imagenet-sample, else assets/)")
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
    parser.add_argument("--skip-explain", dest="explain", action="store_false",
                        help="skip the full Fusion-CAM explain rows and the re-fusion timings")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="no compiled rows (fusioncam/compiled.py)")
    parser.add_argument("--batches", nargs="*", type=int, default=list(BATCHES),
                        help="batch sizes of the eager throughput table")
    parser.add_argument("--compiled-precisions", nargs="*", default=None, choices=("fp32", "bf16", "fp16"),
                        help="graphs to compile (default: fp32 and every --precision)")
    parser.add_argument("--compiled-batches", nargs="*", type=int, default=[],
                        help="more batch sizes to compile for the throughput table (each compiles once)")
    parser.add_argument("--warm-cache", action="store_true",
                        help="reuse inductor's on-disk cache (default: a fresh one: compile times of a first use)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--tuned-allocator", action="store_true",
                        help="tune malloc first, as python app.py and the CLI do (fusioncam/allocator.py)")
    args = parser.parse_args(argv)
    args.allocator = "tuned" if args.tuned_allocator and tune_host_allocator() else "C library default"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile and not args.warm_cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="fusioncam-inductor-")
    os.environ.pop("FUSIONCAM_COMPILE", None)
    torch._logging.set_logs(recompiles=True)      # any recompilation is printed as it happens
    run(args)


if __name__ == "__main__":
    main()
