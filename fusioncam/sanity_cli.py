"""``python -m fusioncam sanity IMAGE --out DIR``: the model-parameter randomisation check.

Writes ``DIR/sanity.json`` (``{"methods": {name: {"steps", "spearman", "ssim"}}, ...}``, one
value per step, step 1 = the classifier head) and ``DIR/sanity.png`` (:mod:`fusioncam.sanity_figure`),
both only once both are ready. Bad input: one line on stderr, exit code 2 (``fusioncam.cli``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .backend import DEVICES
from .images import InputError, load_image
from .models import BUNDLED, ModelError, load_model
from .render import save_png
from .sanity import MODES, SanityResult, cost_text, parse_methods, randomization_steps, sanity_check
from .sanity_figure import sanity_picture

DEFAULT_METHODS = "gradcam,scorecam,fusion"


def write_sanity(result: SanityResult, out_dir: Path) -> None:
    """``sanity.json`` and ``sanity.png`` in ``out_dir``, moved there together once both are written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fusioncam-", dir=out_dir))
    try:
        (staging / "sanity.json").write_text(json.dumps(result.to_json(), indent=1, allow_nan=False))
        save_png(sanity_picture(result), str(staging / "sanity.png"))
        for path in staging.iterdir():
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class StepReporter:
    """Progress on stderr: a line per randomisation step, with the time left once the intact
    model's maps (one step's worth of work) are done."""

    def __init__(self, total_steps: int) -> None:
        self.total, self.started, self.last = total_steps + 1, time.perf_counter(), ""

    def __call__(self, fraction: float, label: str) -> None:
        if label == self.last:
            return
        self.last = label
        done = round(fraction * self.total)
        elapsed = time.perf_counter() - self.started
        left = f", about {elapsed / done * (self.total - done):.0f} s left" if 0 < done < self.total else ""
        print(f"sanity: {label} ({elapsed:.0f} s{left})", file=sys.stderr, flush=True)


def run_sanity(args: argparse.Namespace) -> int:
    """``sanity IMAGE``: randomise a copy of the model step by step and compare each method's map."""
    image = Path(args.image)
    if not image.is_file():
        raise InputError(f"No such image file: {image}.")
    picture = load_image(image)
    model = load_model(args.model, device=args.device)
    model.resolve_layer(args.layer)
    if args.class_index is not None and not 0 <= args.class_index < model.num_classes:
        raise ModelError(f"class {args.class_index} is out of range: this model has classes 0–{model.num_classes - 1}")
    steps = randomization_steps(model)
    print(f"sanity: {args.mode}, {', '.join(args.methods)}: {cost_text(len(steps), args.methods)}",
          file=sys.stderr, flush=True)
    result = sanity_check(model, picture, target=args.class_index, layer=args.layer, methods=args.methods,
                          mode=args.mode, seed=args.seed, progress=StepReporter(len(steps)))
    write_sanity(result, Path(args.out))
    print(f"class {result.target} ({model.class_names[result.target]}) at layer {result.layer}, {len(steps)} "
          f"{args.mode} steps in {result.seconds:.1f} s; wrote {args.out}")
    for name in result.original:
        verdict = "fell (passed)" if result.passed(name) else "did not fall (failed)"
        step, rho = result.judged_step(name), result.judged_rho(name)
        blank = f"; blank (constant) from step {step + 1} on" if step < len(steps) else ""
        print(f"  {name}: Spearman after the last step {result.spearman[name][-1]:+.3f}, "
              f"SSIM {result.ssim[name][-1]:.3f}{blank}: {verdict}"
              + (f" (judged at step {step}, rho {rho:+.3f})" if blank and step else ""))
    return 0


def _methods(text: str) -> list[str]:
    try:
        return parse_methods(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_sanity_command(commands: argparse._SubParsersAction) -> None:
    """Register ``sanity`` on the CLI's sub-command parsers."""
    cmd = commands.add_parser("sanity", help="model-parameter randomisation check of the maps of one image")
    cmd.add_argument("image", help="path of the image to explain")
    cmd.add_argument("--model", default=BUNDLED, help=f"{BUNDLED} (bundled), timm:NAME or torchvision:NAME")
    cmd.add_argument("--layer", default=None, help="target layer name (default: the model's)")
    cmd.add_argument("--class", dest="class_index", type=int, default=None,
                     help="target class index (default: the intact model's top-1 prediction)")
    cmd.add_argument("--methods", type=_methods, default=parse_methods(DEFAULT_METHODS),
                     help=f"comma-separated (default {DEFAULT_METHODS}); scorecam and fusion rerun Score-CAM at "
                          "every step (minutes on a CPU), the gradient methods take seconds")
    cmd.add_argument("--mode", choices=MODES, default="cascading",
                     help="cascading: randomise from the head down, keeping earlier steps; independent: one step "
                          "at a time")
    cmd.add_argument("--seed", type=int, default=0, help="seed of the random re-initialisation")
    cmd.add_argument("--device", choices=DEVICES, default="auto")
    cmd.add_argument("--out", required=True, help="output folder")
    cmd.set_defaults(handler=run_sanity)
