"""Command line: ``python -m fusioncam explain IMAGE --out DIR`` and ``python -m fusioncam layers``.

Bad input (a missing or unreadable image, an unknown model or layer, a class out of range)
prints one line on stderr and exits with code 2, leaving nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from .backend import DEVICES
from .baselines import BASELINES
from .capture import CaptureError
from .explain import MAP_NAMES, REGION_METHODS, Explanation, explain
from .fusion import WEIGHT_MODES
from .gradient import GRADIENT_METHODS
from .images import InputError
from .models import BUNDLED, ModelError, load_model
from .render import COLORMAPS, overlay, save_png

EXIT_USAGE = 2
USER_ERRORS = (InputError, ModelError, CaptureError, ValueError, FileNotFoundError)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"fusioncam: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def write_explanation(explanation: Explanation, out_dir: Path, colormap: str = "jet", opacity: float = 0.5) -> None:
    """Write ``NAME.npy`` and ``NAME.png`` (overlay on the original image) for every map, and
    ``report.json``; files appear in ``out_dir`` only once all of them are written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fusioncam-", dir=out_dir))
    try:
        for name in MAP_NAMES:
            np.save(staging / f"{name}.npy", explanation.maps[name])
            picture = overlay(explanation.image, explanation.maps[name], colormap, opacity)
            save_png(picture, str(staging / f"{name}.png"))
        (staging / "report.json").write_text(json.dumps(explanation.report, indent=2))
        for path in staging.iterdir():
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def run_explain(args: argparse.Namespace) -> int:
    """``explain IMAGE``: compute, then write the maps, overlays and report to ``--out``."""
    image = Path(args.image)
    if not image.is_file():
        raise InputError(f"No such image file: {image}.")
    model = load_model(args.model, device=args.device)
    explanation = explain(model, str(image), target=args.class_index, layer=args.layer, theta=args.theta,
                          strength=args.strength, weights=args.weights, baseline=args.baseline,
                          gradient_method=args.gradient_method, region_method=args.region_method,
                          top_k=args.top_k)
    write_explanation(explanation, Path(args.out), args.colormap, args.opacity)
    report = explanation.report
    print(f"{report['class_name']} (class {report['class_index']}, p = {report['probability']:.3f}) at layer "
          f"{report['layer']}: {report['forward_passes']['masked']} masked passes, "
          f"{sum(report['timings'].values()):.2f} s; wrote {args.out}")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def run_layers(args: argparse.Namespace) -> int:
    """``layers``: the model's candidate target layers, the default marked with ``*``."""
    model = load_model(args.model, device="cpu")
    for name in model.candidate_layers():
        shape = "×".join(str(d) for d in model._spatial_outputs[name][1:])
        print(f"{'*' if name == model.default_layer else ' '} {name}  ({shape})")
    return 0


def build_parser() -> OneLineParser:
    """The ``fusioncam`` argument parser with its sub-commands."""
    parser = OneLineParser(prog="fusioncam", description="Fusion-CAM explanations of image classifiers.")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)

    explain_cmd = commands.add_parser("explain", help="explain one image")
    explain_cmd.add_argument("image", help="path of the image to explain")
    explain_cmd.add_argument("--model", default=BUNDLED, help=f"{BUNDLED} (bundled), timm:NAME or torchvision:NAME")
    explain_cmd.add_argument("--layer", default=None, help="target layer name (default: the model's)")
    explain_cmd.add_argument("--class", dest="class_index", type=int, default=None,
                             help="target class index (default: the top-1 prediction)")
    explain_cmd.add_argument("--theta", type=float, default=10.0, help="denoising percentile θ in [0, 100]")
    explain_cmd.add_argument("--strength", type=float, default=1.0, help="fusion strength λ ≥ 0")
    explain_cmd.add_argument("--weights", choices=WEIGHT_MODES, default="reference")
    explain_cmd.add_argument("--baseline", choices=BASELINES, default="mean")
    explain_cmd.add_argument("--gradient-method", choices=list(GRADIENT_METHODS), default="gradcam")
    explain_cmd.add_argument("--region-method", choices=REGION_METHODS, default="scorecam")
    explain_cmd.add_argument("--top-k", type=int, default=None, help="channels scored by scorecam-topk")
    explain_cmd.add_argument("--device", choices=DEVICES, default="auto")
    explain_cmd.add_argument("--colormap", choices=list(COLORMAPS), default="jet")
    explain_cmd.add_argument("--opacity", type=float, default=0.5)
    explain_cmd.add_argument("--out", required=True, help="output folder")
    explain_cmd.set_defaults(handler=run_explain)

    layers_cmd = commands.add_parser("layers", help="list a model's candidate target layers")
    layers_cmd.add_argument("--model", default=BUNDLED)
    layers_cmd.set_defaults(handler=run_layers)

    from .evaluate import add_evaluate_command

    add_evaluate_command(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except USER_ERRORS as error:
        print(f"fusioncam: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fusioncam: interrupted", file=sys.stderr)
        return 130
