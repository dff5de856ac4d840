"""Paper-style evaluation over a folder: ``python -m fusioncam evaluate DIR --out results.json``.

Every method is scored on the same evidence of each image (target: the predicted class): one
forward + backward gives every gradient map, one exact Score-CAM pass serves Score-CAM and
Fusion-CAM. The metrics are those of :mod:`fusioncam.metrics`, chosen with ``metrics``. The
JSON holds the settings, one record per image (in file-name order) and the summary; it is
rewritten atomically after every round of images, so an interrupted run keeps what it finished
and a rerun with the same ``out`` resumes.

Under ``torchrun`` (:mod:`fusioncam.distributed`) the images still to do are dealt out round
by round — image ``t·N + r`` of that list to rank ``r`` of ``N`` in round ``t`` — and each
round's records are gathered on rank 0, which alone writes the JSON, shows the progress bar
and prints the table. A record depends only on its image, so the JSON equals a single
process's (same threads per process) except for each record's ``rank`` and the timings, and a
rerun with any number of ranks finishes only the images still missing.
"""

from __future__ import annotations

import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from . import fusion
from .distributed import Ranks, process_group
from .explain import FusionParams, GradientEvidence, capture_evidence, derive, score_regions
from .gradient import GRADIENT_METHODS
from .images import InputError, load_image
from .imputation import SOLVERS, default_solver
from .methods import DEFAULT_METHODS, METHOD_NAMES
from .metrics import (
    DEFAULT_STEPS,
    ROAD_NOISE,
    MapScores,
    RoadScores,
    average_drop,
    increase_in_confidence,
    protocol_card,
    road,
    score_maps,
)
from .models import BUNDLED, LoadedModel, load_model

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif", ".tif", ".tiff"}
LABEL_PREFIX = re.compile(r"^(\d+)(?=[_\- ])")
FORMAT_VERSION = 2
METRICS = ("ad", "ic", "deletion", "insertion", "road")
# Table columns: (summary key, header, number format).
COLUMNS = (("average_drop", "Average Drop (%) ↓", ".2f"),
           ("increase_in_confidence", "Increase in Confidence (%) ↑", ".1f"),
           ("deletion", "Deletion AUC ↓", ".4f"),
           ("insertion", "Insertion AUC ↑", ".4f"),
           ("road_morf", "ROAD MoRF ↓", ".4f"),
           ("road_lerf", "ROAD LeRF ↑", ".4f"),
           ("road", "ROAD ↑", ".4f"))
ROAD_KEYS = ("road_morf", "road_lerf", "road")
Progress = Callable[[str, int, int], None]     # (stage, done, total)


def parse_metrics(text: str) -> list[str]:
    """``"ad,deletion"`` → a list of known metrics, in :data:`METRICS` order, without repeats."""
    chosen = {name.strip().lower() for name in text.split(",") if name.strip()}
    unknown = sorted(chosen - set(METRICS))
    if unknown or not chosen:
        raise ValueError(f"unknown metric {', '.join(unknown) or '(none)'}; choose from {', '.join(METRICS)}")
    return [m for m in METRICS if m in chosen]


def default_metrics(device: str) -> list[str]:
    """Every metric but ROAD on the CPU (ROAD's many passes are for a GPU), every one elsewhere."""
    return [m for m in METRICS if m != "road" or not device.startswith("cpu")]


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


def compute_maps(model: LoadedModel, path: Path, methods: Sequence[str], params: FusionParams,
                 progress: Progress | None = None,
                 ) -> tuple[GradientEvidence, dict[str, torch.Tensor], dict[str, float], list[str]]:
    """Every requested map from one evidence, the seconds each took and the fusion's warnings.

    A method's seconds are the sum of the stages it needs: capture (forward + backward), its
    gradient map, denoising, the Score-CAM pass, the fusion scoring — shared stages count in
    full for each method that uses them. ``progress("Score-CAM", done, total)`` follows the
    masked passes.
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
        (regions,) = timed("scorecam", lambda: score_regions(model, [evidence], progress=_stage(progress, "Score-CAM")))
        maps["scorecam"] = regions.region_map()
    if {"combined", "fusion"} & set(methods):
        (explanation,) = timed("fusion", lambda: derive(model, [regions], params))
        maps["combined"] = torch.from_numpy(explanation.maps["combined"])
        maps["fusion"] = torch.from_numpy(explanation.maps["fusion"])
        warnings = explanation.report["warnings"]
    needs = {"denoised": ("capture", params.gradient_method, "denoise"), "scorecam": ("capture", "scorecam"),
             "combined": ("capture", params.gradient_method, "scorecam", "fusion")}
    needs["fusion"] = needs["combined"]
    seconds = {m: sum(stage[s] for s in needs.get(m, ("capture", m))) for m in methods}
    return evidence, {m: maps[m] for m in methods}, seconds, warnings


def evaluate_image(model: LoadedModel, path: Path, methods: Sequence[str], params: FusionParams, steps: int,
                   metrics: Sequence[str], progress: Progress | None = None,
                   road_solver: str | None = None) -> dict[str, Any]:
    """One image's record: prediction, label, and per method its ``metrics`` (and curves).
    ROAD's imputations use ``road_solver`` (default: the model's device's, see
    :func:`~fusioncam.imputation.default_solver`).

    Without Deletion or Insertion the curves are not kept and are scored with one step (their
    cheapest form), so only the ``1 + 5·M`` passes of ``p(x)`` and ``p(m(x, L))`` remain.
    """
    evidence, maps, seconds, warnings = compute_maps(model, path, methods, params, progress)
    started = time.perf_counter()
    curves = {"deletion", "insertion"} & set(metrics)
    scores = score_maps(model, evidence.x, maps, evidence.target, evidence.baseline, steps if curves else 1,
                        progress=_stage(progress, "scoring"))
    roads = road(model, evidence.x, evidence.target, maps, progress=_stage(progress, "ROAD"), solver=road_solver) \
        if "road" in metrics else {}
    label = label_of(path.name)
    first = next(iter(scores.values()))
    return {
        "file": path.name,
        "target": evidence.target,
        "class_name": model.class_names[evidence.target],
        "label": label,
        "correct": None if label is None else label == evidence.target,
        "probability": first.probability,
        "methods": {m: _method_record(scores[m], roads.get(m), seconds[m], metrics) for m in methods},
        "scoring_seconds": round(time.perf_counter() - started, 4),
        "warnings": warnings,
    }


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    """``progress`` with its stage name filled in."""
    return None if progress is None else (lambda done, total: progress(stage, done, total))


def _method_record(score: MapScores, roads: RoadScores | None, seconds: float,
                   metrics: Sequence[str]) -> dict[str, Any]:
    """One method's values on one image: only the chosen metrics' (and the seconds)."""
    record: dict[str, Any] = {}
    if {"ad", "ic"} & set(metrics):
        record["masked_probability"] = score.masked_probability
    if "ad" in metrics:
        record["drop"] = score.drop
    if "ic" in metrics:
        record["increase"] = score.increase
    curves = [curve for curve in ("deletion", "insertion") if curve in metrics]
    for curve in curves:
        record[curve] = score.deletion_auc if curve == "deletion" else score.insertion_auc
    if roads is not None:
        record.update(road_morf=roads.morf_mean, road_lerf=roads.lerf_mean, road=roads.combined)
    record["seconds"] = round(seconds, 4)
    for curve in curves:
        record[f"{curve}_curve"] = [round(v, 6) for v in getattr(score, curve).tolist()]
    if roads is not None:
        record["road_morf_curve"] = [round(v, 6) for v in roads.morf.tolist()]
        record["road_lerf_curve"] = [round(v, 6) for v in roads.lerf.tolist()]
    return record


def summarize(records: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Dataset-level metrics per method over the scored records (failed images left out): Average
    Drop and Increase in Confidence over the images, the mean of every AUC and ROAD score."""
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
        row: dict[str, float] = {}
        if "drop" in values[0]:
            row["average_drop"] = average_drop(y, [v["masked_probability"] for v in values])
        if "increase" in values[0]:
            row["increase_in_confidence"] = increase_in_confidence(y, [v["masked_probability"] for v in values])
        for key in ("deletion", "insertion", *ROAD_KEYS):
            if key in values[0]:
                row[key] = sum(v[key] for v in values) / len(values)
        row["seconds_per_image"] = sum(v["seconds"] for v in values) / len(values)
        summary["methods"][m] = row
    summary["scoring_seconds_per_image"] = sum(r["scoring_seconds"] for r in scored) / len(scored)
    return summary


def markdown_table(summary: dict[str, Any]) -> str:
    """One row per method: each metric the summary holds (:data:`COLUMNS`), then seconds per image."""
    rows = summary["methods"]
    shown = [column for column in COLUMNS if rows and column[0] in next(iter(rows.values()))]
    lines = ["| Method | " + " | ".join(header for _, header, _ in shown) + " | Seconds / image |",
             "| --- |" + " ---: |" * (len(shown) + 1)]
    for m, row in rows.items():
        cells = [f"{row[key]:{spec}}" for key, _, spec in shown] + [f"{row['seconds_per_image']:.3f}"]
        lines.append(f"| {METHOD_NAMES[m]} | " + " | ".join(cells) + " |")
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


def run_evaluate(folder: Path, out: Path, *, model: str = BUNDLED, methods: Sequence[str] = DEFAULT_METHODS,
                 metrics: Sequence[str] | None = None, steps: int = DEFAULT_STEPS, theta: float = 10.0,
                 strength: float = 1.0, device: str = "auto", limit: int | None = None,
                 road_solver: str = "auto") -> int:
    """Score every method on every image of ``folder`` (the first ``limit``), resuming from ``out``
    when it exists; on one process or on every rank of a ``torchrun`` launch. ROAD's imputations
    are solved by ``road_solver`` (``"auto"``: the device's, see
    :func:`~fusioncam.imputation.default_solver`; the results agree within 1e-4, so it is recorded
    in the JSON's ``environment``, not its ``config``). Returns the exit code."""
    if road_solver not in ("auto", *SOLVERS):
        raise ValueError(f"--road-solver must be one of auto, {', '.join(SOLVERS)}, got {road_solver!r}")
    if steps < 1:
        raise ValueError(f"--steps must be ≥ 1, got {steps}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be ≥ 1, got {limit}")
    params = FusionParams(theta=theta, strength=strength).validated()
    with process_group(device) as ranks:
        config = {"format": FORMAT_VERSION, "model": model, "methods": list(methods),
                  "metrics": list(metrics or default_metrics(ranks.device)), "steps": steps,
                  "theta": params.theta, "strength": params.strength, "weights": params.weights,
                  "baseline": "mean", "region_method": "scorecam", "target": "predicted"}
        records: list[dict[str, Any]] = []          # rank 0's: the finished images, resumed and new
        plan: tuple[str | None, list[str], list[str]] = (None, [], [])
        if ranks.main:
            try:
                names = [p.name for p in list_images(folder, limit)]
                records = load_previous(out, config)
                done = {r["file"] for r in records}
                plan = (None, names, [name for name in names if name not in done])
            except InputError as error:
                plan = (str(error), [], [])
        error, names, todo = ranks.broadcast(plan)
        if error is None:
            return _run(ranks, folder, out, config, params, names, todo, records,
                        None if road_solver == "auto" else road_solver)
    if ranks.main:                  # after every rank has left the group: one sentence, from rank 0
        raise InputError(error)
    return 2


def _run(ranks: Ranks, folder: Path, out: Path, config: dict[str, Any], params: FusionParams, names: list[str],
         todo: list[str], records: list[dict[str, Any]], road_solver: str | None) -> int:
    """The rounds over ``todo``: each rank scores its image, rank 0 gathers into ``records``, saves and
    reports."""
    methods, metrics, steps = config["methods"], config["metrics"], config["steps"]
    network = load_model(config["model"], device=ranks.device)
    environment = {"device": str(network.device), "world_size": ranks.world_size, "torch": torch.__version__,
                   "threads": torch.get_num_threads(), "platform": platform.platform(),
                   "processor": platform.processor() or platform.machine()}
    if "road" in metrics:
        environment["road_solver"] = road_solver or default_solver(network.device)
    order = {name: index for index, name in enumerate(names)}
    if ranks.main and len(todo) < len(names):
        print(f"resuming {out}: {len(names) - len(todo)} of {len(names)} images already done", file=sys.stderr)

    def save() -> None:
        records.sort(key=lambda r: order.get(r["file"], len(order)))
        write_json_atomic(out, {"config": config, "environment": environment, "folder": str(folder),
                                "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                                "images": records, "summary": summarize(records, methods)})

    bar = tqdm(total=len(names), initial=len(names) - len(todo), unit="image", disable=not ranks.main,
               file=sys.stderr, dynamic_ncols=True)
    shown = [0.0]

    def progress(stage: str, step: int, total: int) -> None:
        if time.monotonic() - shown[0] > 0.5 or step == total:
            shown[0] = time.monotonic()
            bar.set_postfix_str(f"{stage} {step}/{total}", refresh=True)

    try:
        for start in range(0, len(todo), ranks.world_size):
            mine = todo[start + ranks.rank] if start + ranks.rank < len(todo) else None
            record = None
            if mine is not None:
                bar.set_description_str(mine, refresh=False)
                record = _record(network, folder / mine, methods, params, steps, metrics, progress, ranks.rank,
                                 road_solver)
            gathered = [r for r in ranks.gather(record) if r is not None]
            if ranks.main:
                for failed in (r for r in gathered if "error" in r):
                    bar.write(f"warning: skipped {failed['file']}: {failed['error']}", file=sys.stderr)
                records.extend(gathered)
                save()
                bar.update(len(gathered))
    except KeyboardInterrupt:
        if ranks.main:
            bar.write(f"interrupted: {out} keeps the {len(records)} images finished so far", file=sys.stderr)
        raise
    finally:
        bar.close()
        summary = summarize(records, methods)
        if ranks.main and summary["images"]:
            print(f"{describe(summary)}; model {config['model']}, {steps} steps, θ = {params.theta:g}, "
                  f"λ = {params.strength:g}; written to {out}\n")
            print(markdown_table(summary))
            print("\n" + protocol_card("mean", steps, network.input_size,
                                       ROAD_NOISE if "road" in metrics else None))
    return 0


def _record(model: LoadedModel, path: Path, methods: Sequence[str], params: FusionParams, steps: int,
            metrics: Sequence[str], progress: Progress, rank: int, road_solver: str | None = None) -> dict[str, Any]:
    """One image's record, or its error when it cannot be read, marked with the rank that made it."""
    try:
        record = evaluate_image(model, path, methods, params, steps, metrics, progress, road_solver)
    except InputError as error:
        record = {"file": path.name, "error": str(error)}
    return {**record, "rank": rank}
