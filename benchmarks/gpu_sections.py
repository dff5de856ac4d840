"""The sections of ``benchmarks/gpu.sh``: six Markdown tables of measured rows, one function each.

    python benchmarks/gpu_sections.py --device cuda --images DIR [--dry-run] [--deadline S]

``## Exactness``: all six maps on the device against the CPU's (max |Δ| per map, 3 images) for
fp32 (target ≤ 1e-4) and the opt-in precisions. ``## First explanation of a new image``: per new
image its first (cold) explanation and the median of its repeated (warm) ones, eager and compiled,
after the model's load-time shape warm-up (target: median(cold) / median(warm) ≤ 1.3).
``## Warm explanation and the bound``: a warm ``explain`` against the lower bound
``(K_eff + 1) / rate``, the rate being the network's images/s at the chunk the backend picks, measured
here. ``## Batch``: N images in one call against one at a time (target ≥ 1.3×) and against the
bound ``Σ(K_eff + 1) / rate`` (target ≥ 0.7 of its throughput). ``## Evaluate``: seconds per image
of the evaluation's per-image work with and without ROAD (target ≤ 0.5 s with ROAD).
``## Other models``: ViT-Tiny and ResNet-50 with random weights.

Every timing row says ``cold`` (a first run) or ``warm`` (a repeated one). Each section has a time
budget and reports how much it managed; past the script's deadline a section prints one row saying
it was skipped. ``--dry-run`` runs every section on the CPU at toy sizes (a small CNN on 32×32
inputs, ViT-Tiny and ResNet-50 on 32×32) to check the script, not the speed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fusioncam import MAP_NAMES, Explanation, LoadedModel, explain, load_image, load_model
from fusioncam.backend import auto_chunk_size, prefers_channels_last

T = TypeVar("T")
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
EXACT = 1e-4            # fp32 maps on the device vs the CPU's
FIRST_OVER_WARM = 1.3   # median first explanation / median warm one
BATCH_OVER_LOOP = 1.3   # images/s of one call over one at a time
BOUND_SHARE = 0.7       # a batch's share of the bound's throughput
BATCH_MAPS = 1e-5       # max |Δ| of a batch's maps vs one-by-one maps
ROAD_SECONDS = 0.5      # evaluate with ROAD, seconds per image


@dataclass(frozen=True)
class Plan:
    """Sizes and time budgets (seconds) of one run."""

    exact_images: int
    first_images: int
    warm_runs: int
    batch: int
    batch_repeats: int
    evaluate_images: int
    evaluate_steps: int | None      # None: the evaluation's default
    other_size: int
    other_warm_runs: int
    compile_wait: float
    budgets: dict[str, float]


GPU = Plan(exact_images=3, first_images=5, warm_runs=3, batch=32, batch_repeats=2, evaluate_images=6,
           evaluate_steps=None, other_size=224, other_warm_runs=3, compile_wait=90,
           budgets={"exact": 40, "first": 45, "warm": 20, "batch": 40, "evaluate": 40, "other": 30})
DRY = Plan(exact_images=2, first_images=2, warm_runs=3, batch=4, batch_repeats=1, evaluate_images=2,
           evaluate_steps=4, other_size=32, other_warm_runs=1, compile_wait=300,
           budgets={"exact": 120, "first": 200, "warm": 90, "batch": 120, "evaluate": 300, "other": 200})


class ToyNet(nn.Module):
    """The dry run's stand-in for the bundled model: conv(3→8) → ReLU → conv(8→16, ``features``, 8×8 on a
    32×32 input) → ReLU → pool → fc(16→10), fixed random weights."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.features = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(torch.relu(self.stem(x))))


class Clock:
    """The script's deadline and one section's budget within it."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.section_end = deadline

    def start(self, budget: float) -> float:
        """Begin a section of ``budget`` seconds (cut at the deadline); the seconds it may use."""
        self.section_end = min(time.perf_counter() + budget, self.deadline)
        return self.section_end - time.perf_counter()

    def over(self) -> bool:
        return time.perf_counter() >= self.section_end

    def left(self) -> float:
        return max(0.0, self.section_end - time.perf_counter())


@dataclass
class Run:
    """What every section shares: the device, the models, the images and the clock."""

    device: torch.device
    plan: Plan
    dry: bool
    clock: Clock
    images: list[tuple[str, Image.Image]]
    eager: LoadedModel
    compiled: LoadedModel
    notes: list[str]
    next_image: int = 0

    def fresh(self, count: int) -> list[tuple[str, Image.Image]]:
        """``count`` images no earlier section used (cycling, with a note, when the folder runs out)."""
        picked = [self.images[(self.next_image + i) % len(self.images)] for i in range(count)]
        if self.next_image + count > len(self.images):
            self.notes.append(f"only {len(self.images)} images: some sections reuse images seen before")
        self.next_image += count
        return picked


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(work: Callable[[], T], device: torch.device) -> tuple[float, T]:
    """``(seconds, result)`` of ``work()``, the device's queue drained before and after."""
    sync(device)
    started = time.perf_counter()
    result = work()
    sync(device)
    return time.perf_counter() - started, result


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table; numbers are formatted by the caller."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def seconds(value: float) -> str:
    return f"{value:.3f}"


def verdict(ok: bool, target: str) -> str:
    return f"{'meets' if ok else 'misses'} {target}"


def max_delta(a: Explanation, b: Explanation, names: tuple[str, ...] = MAP_NAMES) -> float:
    """max over ``names`` of max |a.maps[name] − b.maps[name]|."""
    return max(float(np.abs(a.maps[name] - b.maps[name]).max()) for name in names)


def masked(ex: Explanation) -> int:
    return int(ex.report["forward_passes"]["masked"])


def throwaway_image(size: int = 96) -> Image.Image:
    """An image no section uses (a bright square on noise), for warming a model up without the API."""
    pixels = np.random.default_rng(7).integers(0, 120, (size, size, 3), dtype=np.uint8)
    pixels[size // 4:size // 2, size // 3:2 * size // 3] = 230
    return Image.fromarray(pixels)


def finish_warm_up(model: LoadedModel, label: str, wait: float) -> str:
    """Wait for the load-time shape warm-up (and a compiled model's graphs, at most ``wait`` s); one line
    saying what was done."""
    started = time.perf_counter()
    parts = []
    if hasattr(model, "wait_warm"):
        done = model.wait_warm(timeout=wait)
        parts.append("load-time shape warm-up " + ("finished" if done else f"not finished after {wait:.0f} s"))
        if model.device.type == "cpu" and hasattr(model, "warm_up_shapes"):
            parts.append(f"warm_up_shapes() ran {len(model.warm_up_shapes())} shapes (CPU: none at load)")
    elif hasattr(model, "warm_up_shapes"):
        parts.append(f"no wait_warm(): warm_up_shapes() ran {len(model.warm_up_shapes())} shapes")
    else:
        explain(model, throwaway_image())
        parts.append("NO warm-up API (wait_warm / warm_up_shapes missing): one explain on a throwaway image instead")
    if model.compile:
        done = model.scorers.wait(timeout=max(0.0, wait - (time.perf_counter() - started)))
        ready = sorted(model.scorers.ready_after_s.items(), key=lambda item: item[1])
        state = f"{len(ready)} compiled graphs ready (batch: seconds from first use " + ", ".join(
            f"{key.shape[0]}: {after:.0f}" for key, after in ready) + ")"
        if model.scorers.failure:
            state += f", compilation OFF ({model.scorers.failure}): its rows are eager"
        elif not done:
            state += f", more still compiling after {wait:.0f} s: rows use eager where a graph is missing"
        parts.append(state)
    return f"{label}: " + "; ".join(parts) + f" (took {time.perf_counter() - started:.1f} s)"


def section(title: str, budget_key: str) -> Callable[[Callable[[Run], str]], Callable[[Run], None]]:
    """Print ``## title`` and the table the section returns; one 'skipped' row past the deadline, one
    'failed' row (and the error) when the section raises."""
    def wrap(body: Callable[[Run], str]) -> Callable[[Run], None]:
        def run(r: Run) -> None:
            print(f"\n## {title}\n", flush=True)
            budget = r.plan.budgets[budget_key]
            if r.clock.start(budget) <= 1:
                print(table(["section", "status"], [[title, "skipped: the script's time was spent"]]))
                return
            started = time.perf_counter()
            try:
                print(body(r))
            except Exception as error:   # one section's failure must not cost the others' rows
                print(table(["section", "status"], [[title, f"failed: {type(error).__name__}: {error}"]]))
            print(f"\n({time.perf_counter() - started:.1f} s of its {budget:.0f} s budget)", flush=True)
        return run
    return wrap


@section("Exactness", "exact")
def exactness(r: Run) -> str:
    """max |Δ| per map, device vs CPU, same class, over the images, per precision."""
    reference_model = make_main(torch.device("cpu"), compile=False, dry=r.dry)
    images = r.fresh(r.plan.exact_images)
    references = [explain(reference_model, image) for _, image in images]
    rows = []
    for precision in PRECISIONS:
        if r.clock.over():
            rows.append([precision, "not run: section budget spent", *[""] * len(MAP_NAMES), ""])
            continue
        deltas = {name: 0.0 for name in MAP_NAMES}
        try:
            for (_, image), ref in zip(images, references, strict=True):
                ex = explain(r.eager, image, target=ref.report["class_index"], precision=precision)
                for name in MAP_NAMES:
                    deltas[name] = max(deltas[name], float(np.abs(ex.maps[name] - ref.maps[name]).max()))
        except ValueError as error:
            rows.append([precision, f"refused: {error}", *[""] * len(MAP_NAMES), ""])
            continue
        worst = max(deltas.values())
        check = verdict(worst <= EXACT, f"≤ {EXACT:.0e}") if precision == "fp32" else "opt-in, approximate"
        rows.append([precision, f"{len(images)} images", *(f"{deltas[n]:.1e}" for n in MAP_NAMES), check])
    return (table(["precision", "images", *(f"max \\|Δ\\| {n}" for n in MAP_NAMES), "verdict"], rows)
            + f"\n\n{r.device} (eager) against a CPU model, fp32 reference, the CPU's class for both.")


@section("First explanation of a new image", "first")
def first_explanation(r: Run) -> str:
    """Per new image: the first explanation (cold) and the median of warm repeats, eager and compiled."""
    images = r.fresh(r.plan.first_images)
    rows, summary, eager_maps = [], [], {}
    paths = (("eager", r.eager), ("compiled", r.compiled))
    for index, (path, model) in enumerate(paths):
        builds = model.scorers.builds_started
        stop = time.perf_counter() + r.clock.left() / (len(paths) - index)    # each path its share
        known = set(model.warm_up_shapes()) if hasattr(model, "warm_up_shapes") else set()
        cold, warm = [], []
        for image_path, image in images:
            if cold and time.perf_counter() >= stop:
                break
            name = Path(image_path).name
            with input_shapes(model) as shapes:
                first_s, ex = timed(lambda image=image, model=model: explain(model, image), r.device)
            new = sorted(set(shapes) - known)
            known |= set(shapes)
            repeats = [timed(lambda image=image, model=model: explain(model, image), r.device)[0]
                       for _ in range(r.plan.warm_runs)]
            cold.append(first_s)
            warm.append(statistics.median(repeats))
            if path == "eager":
                eager_maps[name] = ex
            delta = f"{max_delta(ex, eager_maps[name]):.1e}" if path == "compiled" and name in eager_maps else "–"
            rows.append([path, name, f"cold ×1, warm ×{r.plan.warm_runs}", masked(ex),
                         ", ".join("×".join(map(str, shape)) for shape in new) or "none", seconds(first_s),
                         seconds(warm[-1]), f"{first_s / warm[-1]:.2f}", delta])
        if cold:
            ratio = statistics.median(cold) / statistics.median(warm)
            summary.append([path, f"median over {len(cold)} of {len(images)} images",
                            f"cold ×{len(cold)}, warm ×{len(cold) * r.plan.warm_runs}", "", "",
                            seconds(statistics.median(cold)), seconds(statistics.median(warm)),
                            f"{ratio:.2f}", verdict(ratio <= FIRST_OVER_WARM, f"≤ {FIRST_OVER_WARM}")])
        if model.compile and model.scorers.builds_started > builds:
            r.notes.append(f"{path}: {model.scorers.builds_started - builds} graph builds started during "
                           "'First explanation' (a new shape reached the compiled path)")
    header = ["path", "image", "runs", "K_eff", "new network input shapes (cold run)", "cold s (first run)",
              f"warm s (median of {r.plan.warm_runs})", "cold / warm", "max \\|Δ\\| vs eager"]
    return table(header, rows + summary) + (
        "\n\nImages no earlier section explained; each run is explain(model, decoded PIL image), preprocessing to "
        "the last map. New shapes: inputs the eager network saw (a forward pre-hook) that neither "
        "model.warm_up_shapes() nor an earlier image in this table ran; a compiled graph's calls bypass the hook.")


@contextlib.contextmanager
def input_shapes(model: LoadedModel) -> Iterator[list[tuple[int, ...]]]:
    """The input shapes of every forward of ``model``'s eager network inside the block."""
    seen: list[tuple[int, ...]] = []
    handle = model.module.register_forward_pre_hook(lambda _module, inputs: seen.append(tuple(inputs[0].shape)))
    try:
        yield seen
    finally:
        handle.remove()


def peak_rate(model: LoadedModel, chunk: int, device: torch.device, rounds: int) -> float:
    """Best-of-3 images/s of ``model.score`` (the library's masked-pass call: fp32, eager or compiled as the
    model is set) on warm batches of ``chunk`` rows, in the layout the network prefers."""
    layout = torch.channels_last if prefers_channels_last(model) else torch.contiguous_format
    with torch.inference_mode():
        x = torch.randn((chunk, 3, *model.input_size), device=device).contiguous(memory_format=layout)
        model.score(x, chunk)
        model.score(x, chunk)
        best = min(timed(lambda: [model.score(x, chunk) for _ in range(rounds)], device)[0] for _ in range(3))
    return chunk * rounds / best


def chunk_of(model: LoadedModel, device: torch.device) -> int:
    return auto_chunk_size(device, (3, *model.input_size), model, "fp32")


@section("Warm explanation and the bound", "warm")
def warm_and_bound(r: Run) -> str:
    """Warm explain vs (K_eff + 1) masked passes at the network's measured rate, eager and compiled."""
    (image_path, image), = r.fresh(1)
    name, rows = Path(image_path).name, []
    for path, model in (("eager", r.eager), ("compiled", r.compiled)):
        if r.clock.over():
            rows.append([path, "not run: section budget spent", *[""] * 7])
            continue
        chunk = chunk_of(model, r.device)
        rate = peak_rate(model, chunk, r.device, rounds=4 if r.device.type == "cuda" else 2)
        ex = explain(model, image)
        repeats = [timed(lambda model=model: explain(model, image), r.device)[0] for _ in range(r.plan.warm_runs)]
        warm, k = statistics.median(repeats), masked(ex)
        bound = (k + 1) / rate
        rows.append([path, f"warm (median of {r.plan.warm_runs}, after one untimed)", name, k, chunk, f"{rate:.0f}",
                     seconds(bound), seconds(warm), f"{warm / bound:.2f}"])
    header = ["path", "run", "image", "K_eff", "chunk", "rate images/s (warm, fp32)", "bound s = (K_eff+1)/rate",
              "explain s", "explain / bound"]
    return table(header, rows) + "\n\nRate: best of 3 timings of model.score at the chunk the backend picks " \
        "(channels_last where the network is), measured in this run."


def batch_vs_loop(r: Run, model: LoadedModel, path: str, images: list[Image.Image], rate: float) -> list[Any]:
    """One row: warm timings of ``explain(model, images)`` and of a loop over them, the bound, peak memory."""
    one_call = explain(model, images)                              # untimed: both runs below are warm
    loop = [explain(model, image) for image in images]
    batch_s, loop_s = [], []
    peak = "n/a (CPU)"
    for _ in range(r.plan.batch_repeats):
        if r.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(r.device)
        batch_s.append(timed(lambda: explain(model, images), r.device)[0])
        if r.device.type == "cuda":
            peak = f"{torch.cuda.max_memory_allocated(r.device) / 2**20:.0f}"
        loop_s.append(timed(lambda: [explain(model, image) for image in images], r.device)[0])
        if r.clock.over():
            break
    n, batch, one = len(images), statistics.median(batch_s), statistics.median(loop_s)
    bound = sum(masked(ex) + 1 for ex in one_call) / rate
    delta = max(max_delta(a, b) for a, b in zip(one_call, loop, strict=True))
    ratio, share = one / batch, bound / batch
    speed = verdict(ratio >= BATCH_OVER_LOOP and share >= BOUND_SHARE,
                    f"≥ {BATCH_OVER_LOOP}× loop and ≥ {BOUND_SHARE} of bound")
    return [path, f"warm (median of {len(batch_s)}, after one untimed each)", n, seconds(batch), f"{n / batch:.1f}",
            seconds(one), f"{n / one:.1f}", f"{ratio:.2f}", seconds(bound), f"{share:.2f}", peak, f"{delta:.1e}",
            f"{speed}; maps {verdict(delta <= BATCH_MAPS, f'≤ {BATCH_MAPS:.0e}')}"]


@section("Batch", "batch")
def batch(r: Run) -> str:
    """N images in one call vs one at a time, eager then compiled (as the budget allows)."""
    images = [image for _, image in r.fresh(r.plan.batch)]
    rows = []
    for path, model in (("eager", r.eager), ("compiled", r.compiled)):
        if r.clock.over():
            rows.append([path, "not run: section budget spent", *[""] * 11])
            continue
        rate = peak_rate(model, chunk_of(model, r.device), r.device, rounds=4 if r.device.type == "cuda" else 2)
        rows.append(batch_vs_loop(r, model, path, images, rate))
    header = ["path", "run", "images", "one call s", "one call images/s", "one at a time s", "one at a time images/s",
              "call / loop speed", "bound s = Σ(K_eff+1)/rate", "share of bound", "peak GPU MB (one call)",
              "max \\|Δ\\| call vs loop", "verdict"]
    return table(header, rows)


@section("Evaluate", "evaluate")
def evaluate(r: Run) -> str:
    """Seconds per image of the evaluation's per-image work (``evaluate_image``, what
    ``python -m fusioncam evaluate`` runs for each image after loading the model), eager model."""
    from fusioncam.evaluate import evaluate_image
    from fusioncam.explain import FusionParams
    from fusioncam.methods import DEFAULT_METHODS
    from fusioncam.metrics import DEFAULT_STEPS

    steps = r.plan.evaluate_steps or DEFAULT_STEPS
    paths = [Path(name) for name, _ in r.fresh(r.plan.evaluate_images)]
    params = FusionParams().validated()
    rows = []
    runs = (("without ROAD", "ad,ic,deletion,insertion"), ("with ROAD", "ad,ic,deletion,insertion,road"))
    for index, (label, metrics) in enumerate(runs):
        share = r.clock.left() / (len(runs) - index)
        stop = time.perf_counter() + share
        times = []
        for path in paths:
            if times and time.perf_counter() >= stop:
                break
            times.append(timed(lambda path=path, metrics=metrics: evaluate_image(
                r.eager, path, DEFAULT_METHODS, params, steps, metrics.split(",")), r.device)[0])
        warm = statistics.median(times[1:]) if len(times) > 1 else float("nan")
        check = verdict(warm <= ROAD_SECONDS, f"≤ {ROAD_SECONDS} s warm") if label == "with ROAD" else ""
        rows.append([label, metrics, f"cold (first of {len(times)} images)", seconds(times[0]), ""])
        rows.append([label, metrics, f"warm (median of the other {len(times) - 1})", seconds(warm), check])
    return table(["metrics set", "--metrics", "run", "s per image", "verdict"], rows) + (
        f"\n\n{len(DEFAULT_METHODS)} methods ({', '.join(DEFAULT_METHODS)}), {steps} steps, eager model "
        "(compile=False), model load excluded: fusioncam.evaluate.evaluate_image per image, the CLI's loop body "
        f"(python -m fusioncam evaluate DIR --device {r.device.type} --metrics … --limit {len(paths)}).")


def other_model(name: str, size: int) -> nn.Module:
    """ViT-Tiny or ResNet-50 from timm, random weights seeded (K_eff depends on them)."""
    import timm

    torch.manual_seed(0)
    if name == "ViT-Tiny":
        extra = {} if size == 224 else {"img_size": size}
        return timm.create_model("vit_tiny_patch16_224", pretrained=False, **extra)
    return timm.create_model("resnet50", pretrained=False)


@section("Other models", "other")
def other_models(r: Run) -> str:
    """ViT-Tiny and ResNet-50, random weights, eager: cold and warm explain, K_eff."""
    (_, image), = r.fresh(1)
    size, rows = r.plan.other_size, []
    for name in ("ViT-Tiny", "ResNet-50"):
        if r.clock.over():
            rows.append([name, "not run: section budget spent", *[""] * 5])
            continue
        wrapped = LoadedModel.from_module(other_model(name, size), name=name, input_size=(size, size))
        model = load_model(wrapped, device=str(r.device), compile=False)
        r.notes.append(finish_warm_up(model, name, r.plan.compile_wait))
        cold, ex = timed(lambda model=model: explain(model, image), r.device)
        warm_runs = r.plan.other_warm_runs
        repeats = [timed(lambda model=model: explain(model, image), r.device)[0] for _ in range(warm_runs)]
        rows.append([name, model.default_layer, f"cold ×1, warm ×{warm_runs}", masked(ex), seconds(cold),
                     seconds(statistics.median(repeats))])
        del model, wrapped
    return table(["model", "layer", "runs", "K_eff", "cold s (first run)",
                  f"warm s (median of {r.plan.other_warm_runs})"], rows) + (
        f"\n\nRandom weights, {size}×{size} input, eager, after the load-time warm-up.")


def make_main(device: torch.device, compile: bool, dry: bool) -> LoadedModel:
    """The bundled EfficientNet-Lite0, or in a dry run the toy CNN on 32×32 inputs (both deterministic)."""
    if dry:
        toy = LoadedModel.from_module(ToyNet(), name="toy", input_size=(32, 32), default_layer="features",
                                      class_names=[f"c{i}" for i in range(10)])
        return load_model(toy, device=str(device), compile=compile)
    return load_model("efficientnet_lite0", device=str(device), compile=compile)


def load_images(folder: Path, count: int) -> Iterator[tuple[str, Image.Image]]:
    """The first ``count`` images of ``folder`` by name, decoded once (no section times decoding)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png"})
    for path in paths[:count]:
        yield str(path), load_image(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=("cpu", "cuda"))
    parser.add_argument("--images", type=Path, required=True, help="folder of images")
    parser.add_argument("--dry-run", action="store_true", help="toy sizes (on the CPU)")
    parser.add_argument("--deadline", type=float, default=None,
                        help="when to stop, in seconds since the epoch (default: 285 s from now)")
    args = parser.parse_args(argv)
    budget = 285.0 if args.deadline is None else args.deadline - time.time()
    clock = Clock(time.perf_counter() + budget)
    device = torch.device(args.device)
    plan = DRY if args.dry_run else GPU
    if args.dry_run:
        torch.set_num_threads(1)   # on a shared 2-core machine two OpenMP threads wait on each other (10× slower)
    needed = plan.exact_images + plan.first_images + plan.batch + plan.evaluate_images + 2
    images = list(load_images(args.images, needed))
    if not images:
        raise SystemExit(f"gpu_sections.py: no images in {args.images}")
    compiled = make_main(device, compile=True, dry=args.dry_run)     # its graphs build while Exactness runs
    eager = make_main(device, compile=False, dry=args.dry_run)
    notes = [finish_warm_up(eager, "eager", plan.compile_wait)]
    run = Run(device, plan, args.dry_run, clock, images, eager, compiled, notes)
    chunk = chunk_of(eager, device)
    threads = f"CPU, torch threads: {torch.get_num_threads()}"
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else threads
    print(f"python {sys.version.split()[0]} · torch {torch.__version__} · {where}\n"
          f"model {eager.name} · {len(images)} images from {args.images} · chunk {chunk} (fp32) · "
          f"{'dry run (toy sizes)' if args.dry_run else 'full run'} · {budget:.0f} s left for the sections\n"
          f"- {notes[0]}", flush=True)
    exactness(run)
    run.notes.append(finish_warm_up(compiled, "compiled", plan.compile_wait))
    print(f"\n- {run.notes[-1]}", flush=True)
    for body in (first_explanation, warm_and_bound, batch, evaluate, other_models):
        body(run)
    print("\nNotes:\n" + "\n".join(f"- {note}" for note in dict.fromkeys(run.notes)))


if __name__ == "__main__":
    main()
