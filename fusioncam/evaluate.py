"""Paper-style evaluation over a folder: ``python -m fusioncam evaluate DIR --out results.json``.

Every method is scored on the same evidence of each image (target: the predicted class): one
forward + backward gives every gradient map, one exact Score-CAM pass serves Score-CAM and
Fusion-CAM. The metrics are those of :mod:`fusioncam.metrics`. The JSON holds the settings,
one record per image and the summary; it is rewritten atomically after every image, so an
interrupted run keeps what it finished and a rerun with the same ``--out`` resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TextIO

import torch

from . import fusion
from .backend import DEVICES
from .explain import Evidence, FusionParams, capture_evidence, derive, score_regions
from .gradient import GRADIENT_METHODS
from .images import InputError, load_image
from .metrics import DEFAULT_STEPS, MapScores, average_drop, increase_in_confidence, score_maps
from .models import BUNDLED, LoadedModel, load_model

DEFAULT_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "fusion")
METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
                "denoised": "denoised Grad-CAM", "scorecam": "Score-CAM", "combined": "combined",
                "fusion": "Fusion-CAM"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
LABEL_PREFIX = re.compile(r"^(\d+)(?=[_\- ])")
FORMAT_VERSION = 1


def parse_methods(text: str) -> list[str]:
    """``"gradcam,scorecam,fusion"`` → a list of known methods, in order, without repeats."""
    methods = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in methods if name not in METHOD_NAMES]
    if unknown or not methods:
        raise argparse.ArgumentTypeError(f"unknown method {', '.join(unknown) or '(none)'}; choose from "
                                         f"{', '.join(METHOD_NAMES)}")
    return methods


def list_images(folder: Path, limit: int | None = None) -> list[Path]:
    """The image files directly in ``folder``, sorted by name, at most ``limit`` of them."""
    if not folder.is_dir():
        raise InputError(f"No such folder: {folder}.")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise InputError(f"No image files (.jpg, .png, …) in {folder}.")
    return images if limit is None else images[:limit]


def label_of(name: str) -> int | None:
    """The class index a file name starts with (``000_n01440764_tench.jpg`` → 0), else ``None``."""
    match = LABEL_PREFIX.match(name)
    return int(match.group(1)) if match else None


def compute_maps(model: LoadedModel, path: Path, methods: list[str], params: FusionParams,
                 ) -> tuple[Evidence, dict[str, torch.Tensor], dict[str, float], list[str]]:
    """Every requested map from one evidence, the seconds each took and the fusion's warnings.

    A method's seconds are the sum of the stages it needs: capture (forward + backward), its
    gradient map, denoising, the Score-CAM pass, the fusion scoring — shared stages count in
    full for each method that uses them.
    """
    stage: dict[str, float] = {}

    def timed(name: str, work: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = work()
        stage[name] = time.perf_counter() - started
        return result

    (evidence,) = timed("capture", lambda: capture_evidence(model, [load_image(path)]))
    wanted_gradients = {m for m in methods if m in GRADIENT_METHODS}
    if {"denoised", "combined", "fusion"} & set(methods):
        wanted_gradients.add(params.gradient_method)
    for method in sorted(wanted_gradients):
        timed(method, lambda m=method: evidence.gradient_map(m))
    maps = {m: evidence.gradient_map(m) for m in methods if m in GRADIENT_METHODS}
    if "denoised" in methods:
        maps["denoised"] = timed("denoise", lambda: fusion.denoise(evidence.gradient_map(params.gradient_method),
                                                                   params.theta)[0])
    warnings: list[str] = []
    if {"scorecam", "combined", "fusion"} & set(methods):
        maps["scorecam"] = timed("scorecam", lambda: (score_regions(model, [evidence]), evidence.region_map())[1])
    if {"combined", "fusion"} & set(methods):
        (explanation,) = timed("fusion", lambda: derive(model, [evidence], params))
        maps["combined"] = torch.from_numpy(explanation.maps["combined"])
        maps["fusion"] = torch.from_numpy(explanation.maps["fusion"])
        warnings = explanation.report["warnings"]
    needs = {"denoised": ("capture", params.gradient_method, "denoise"), "scorecam": ("capture", "scorecam"),
             "combined": ("capture", params.gradient_method, "scorecam", "fusion")}
    needs["fusion"] = needs["combined"]
    seconds = {m: sum(stage[s] for s in needs.get(m, ("capture", m))) for m in methods}
    return evidence, {m: maps[m] for m in methods}, seconds, warnings


def evaluate_image(model: LoadedModel, path: Path, methods: list[str], params: FusionParams, steps: int,
                   progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """One image's record: prediction, label, and per method its metric values and curves."""
    evidence, maps, seconds, warnings = compute_maps(model, path, methods, params)
    started = time.perf_counter()
    scores = score_maps(model, evidence.x, maps, evidence.target, evidence.baseline, steps, progress=progress)
    label = label_of(path.name)
    first = next(iter(scores.values()))
    return {
        "file": path.name,
        "target": evidence.target,
        "class_name": model.class_names[evidence.target],
        "label": label,
        "correct": None if label is None else label == evidence.target,
        "probability": first.probability,
        "methods": {m: _method_record(scores[m], seconds[m]) for m in methods},
        "scoring_seconds": round(time.perf_counter() - started, 4),
        "warnings": warnings,
    }


def _method_record(score: MapScores, seconds: float) -> dict[str, Any]:
    return {"masked_probability": score.masked_probability, "drop": score.drop, "increase": score.increase,
            "deletion": score.deletion_auc, "insertion": score.insertion_auc, "seconds": round(seconds, 4),
            "deletion_curve": [round(v, 6) for v in score.deletion.tolist()],
            "insertion_curve": [round(v, 6) for v in score.insertion.tolist()]}


def summarize(records: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    """Dataset-level metrics per method over the scored records (failed images left out)."""
    scored = [r for r in records if "error" not in r]
    labelled = [r for r in scored if r["correct"] is not None]
    summary: dict[str, Any] = {
        "images": len(scored),
        "failed": len(records) - len(scored),
        "labelled": len(labelled),
        "correct": sum(r["correct"] for r in labelled),
        "methods": {},
    }
    if not scored:
        return summary
    y = [r["probability"] for r in scored]
    for m in methods:
        values = [r["methods"][m] for r in scored]
        o = [v["masked_probability"] for v in values]
        summary["methods"][m] = {
            "average_drop": average_drop(y, o),
            "increase_in_confidence": increase_in_confidence(y, o),
            "deletion": sum(v["deletion"] for v in values) / len(values),
            "insertion": sum(v["insertion"] for v in values) / len(values),
            "seconds_per_image": sum(v["seconds"] for v in values) / len(values),
        }
    summary["scoring_seconds_per_image"] = sum(r["scoring_seconds"] for r in scored) / len(scored)
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per method: Average Drop, Increase in Confidence, Deletion, Insertion, seconds per image."""
    lines = ["| Method | Average Drop (%) ↓ | Increase in Confidence (%) ↑ | Deletion AUC ↓ | Insertion AUC ↑ "
             "| Seconds / image |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for m, row in summary["methods"].items():
        lines.append(f"| {METHOD_NAMES[m]} | {row['average_drop']:.2f} | {row['increase_in_confidence']:.1f} "
                     f"| {row['deletion']:.4f} | {row['insertion']:.4f} | {row['seconds_per_image']:.3f} |")
    return "\n".join(lines)


def describe(summary: dict[str, Any]) -> str:
    """A one-line account of the images behind a table."""
    text = f"{summary['images']} images"
    if summary["labelled"]:
        text += f", top-1 correct on {summary['correct']}/{summary['labelled']} labelled"
    if summary["failed"]:
        text += f", {summary['failed']} unreadable (skipped)"
    return text


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename: never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=1, allow_nan=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_previous(path: Path, config: dict[str, Any]) -> list[dict[str, Any]]:
    """The records of an earlier run with the same settings (none if ``path`` does not exist)."""
    if not path.exists():
        return []
    try:
        data = json.loads(path.read_text())
        previous, records = data["config"], list(data["images"])
    except (OSError, ValueError, KeyError, TypeError):
        raise InputError(f"{path} exists but is not a results file of this command; use another --out.") from None
    changed = sorted(key for key in config if previous.get(key) != config[key])
    if changed:
        raise InputError(f"{path} was made with other settings ({', '.join(changed)}); use another --out "
                         "or the same settings to resume.")
    return records


class ProgressBar:
    """A plain-text progress bar on a terminal stream (one line per image when not a terminal)."""

    def __init__(self, total: int, stream: TextIO | None = None, width: int = 24) -> None:
        self.total, self.stream, self.width = total, stream or sys.stderr, width
        self.started = time.perf_counter()
        self.live = self.stream.isatty()
        self.finished = 0

    def update(self, done: float, label: str = "", final: bool = False) -> None:
        """Show ``done`` of ``total`` images (fractions while one is in progress)."""
        if not (self.live or final):
            return
        if final:
            self.finished += 1
        filled = int(self.width * done / max(self.total, 1))
        elapsed = time.perf_counter() - self.started
        rate = elapsed / self.finished if self.finished else 0.0
        eta = f"ETA {_clock(rate * (self.total - done))}" if self.finished else "ETA …"
        line = f"[{'#' * filled}{'-' * (self.width - filled)}] {done:.0f}/{self.total}  {eta}  {label}"
        if self.live:
            self.stream.write(f"\r{line[:120]:<120}")
            if final and done >= self.total:
                self.stream.write("\n")
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}"


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate DIR``: score every method on every image, resuming from ``--out`` when it exists."""
    if args.steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {args.steps}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be ≥ 1, got {args.limit}")
    params = FusionParams(theta=args.theta, strength=args.strength).validated()
    images = list_images(Path(args.folder), args.limit)
    out = Path(args.out)
    config = {"format": FORMAT_VERSION, "model": args.model, "methods": args.methods, "steps": args.steps,
              "theta": params.theta, "strength": params.strength, "weights": params.weights, "baseline": "mean",
              "region_method": "scorecam", "target": "predicted"}
    records = load_previous(out, config)
    done = {r["file"] for r in records}
    todo = [p for p in images if p.name not in done]
    model = load_model(args.model, device=args.device)
    environment = {"device": str(model.device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                   "platform": platform.platform(), "processor": platform.processor() or platform.machine()}
    if done:
        print(f"resuming {out}: {len(images) - len(todo)} of {len(images)} images already done", file=sys.stderr)

    def save() -> None:
        write_json_atomic(out, {"config": config, "environment": environment, "folder": str(Path(args.folder)),
                                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "images": records, "summary": summarize(records, args.methods)})

    bar = ProgressBar(len(images))
    finished = len(images) - len(todo)
    try:
        for path in todo:
            def inner(done_jobs: int, total_jobs: int, start: int = finished, name: str = path.name) -> None:
                bar.update(start + done_jobs / total_jobs, name)

            bar.update(finished, path.name)
            try:
                records.append(evaluate_image(model, path, args.methods, params, args.steps, inner))
            except InputError as error:
                records.append({"file": path.name, "error": str(error)})
                print(f"\nwarning: skipped {path.name}: {error}", file=sys.stderr)
            save()
            finished += 1
            bar.update(finished, path.name, final=True)
    except KeyboardInterrupt:
        print(f"\ninterrupted: {out} keeps the {finished} images finished so far", file=sys.stderr)
        raise
    finally:
        summary = summarize(records, args.methods)
        if summary["images"]:
            print(f"{describe(summary)}; model {args.model}, {args.steps} steps, θ = {params.theta:g}, "
                  f"λ = {params.strength:g}; written to {out}\n")
            print(markdown_table(summary))
    return 0


def add_evaluate_command(commands: argparse._SubParsersAction) -> None:
    """Register ``evaluate`` on the CLI's sub-command parsers."""
    cmd = commands.add_parser("evaluate", help="score the methods' faithfulness over a folder of images")
    cmd.add_argument("folder", metavar="DIR", help="folder of images (a leading class index in a name is the label)")
    cmd.add_argument("--model", default=BUNDLED, help=f"{BUNDLED} (bundled), timm:NAME or torchvision:NAME")
    cmd.add_argument("--methods", type=parse_methods, default=list(DEFAULT_METHODS),
                     help=f"comma-separated, from {', '.join(METHOD_NAMES)} (default: {','.join(DEFAULT_METHODS)})")
    cmd.add_argument("--limit", type=int, default=None, help="only the first N images (by file name)")
    cmd.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="deletion / insertion steps")
    cmd.add_argument("--theta", type=float, default=10.0, help="denoising percentile θ in [0, 100]")
    cmd.add_argument("--strength", type=float, default=1.0, help="fusion strength λ ≥ 0")
    cmd.add_argument("--device", choices=DEVICES, default="auto")
    cmd.add_argument("--out", required=True, help="results JSON (resumed when it exists)")
    cmd.set_defaults(handler=run_evaluate)
