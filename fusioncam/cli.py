"""Command line: ``python -m fusioncam explain IMAGE --out DIR``, ``compare IMAGE --out DIR``,
``layers`` and ``evaluate DIR``.

Argument parsing only: the work is in the library (:mod:`fusioncam.export` writes the files,
:mod:`fusioncam.evaluate` runs the evaluation, also under ``torchrun``). Bad input (a missing
or unreadable image, an unknown model or layer, a class out of range) prints one line on
stderr and exits with code 2, leaving nothing half-written.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from . import evaluate
from .allocator import tune_host_allocator
from .backend import DEVICES
from .baselines import BASELINES
from .capture import CaptureError
from .compare import LABELS, RECORD_KEYS, SIDES, compare, explain_pair, format_value, side
from .explain import REGION_METHODS, explain
from .export import comparison_command, reproduce_command, write_comparison, write_explanation
from .fusion import WEIGHT_MODES
from .gradient import GRADIENT_METHODS
from .images import InputError, load_image
from .methods import DEFAULT_METHODS, METHOD_NAMES, SALIENCY_MAPS, parse_methods
from .metrics import DEFAULT_STEPS, score_maps
from .models import BUNDLED, ModelError, load_model
from .render import COLORMAPS

EXIT_USAGE = 2
USER_ERRORS = (InputError, ModelError, CaptureError, ValueError, FileNotFoundError)


class OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"fusioncam: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _listed(parse: Callable[[str], list[str]]) -> Callable[[str], list[str]]:
    """An argparse type from a parser of comma-separated names that raises ``ValueError``."""
    def convert(text: str) -> list[str]:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None
    return convert


def run_explain(args: argparse.Namespace) -> int:
    """``explain IMAGE``: compute, optionally score the maps, then write the maps, overlays and
    report (and ``report.html`` / ``panel.png``) to ``--out``."""
    image = Path(args.image)
    if not image.is_file():
        raise InputError(f"No such image file: {image}.")
    if args.faithfulness is not None and args.faithfulness < 1:
        raise ValueError(f"--faithfulness needs ≥ 1 curve steps, got {args.faithfulness}")
    model = load_model(args.model, device=args.device)
    explanation = explain(model, str(image), target=args.class_index, layer=args.layer, theta=args.theta,
                          strength=args.strength, weights=args.weights, baseline=args.baseline,
                          gradient_method=args.gradient_method, region_method=args.region_method,
                          top_k=args.top_k)
    scores = None
    if args.faithfulness is not None:
        evidence = explanation.evidence
        scores = score_maps(model, evidence.x, {name: explanation.maps[name] for name in SALIENCY_MAPS},
                            evidence.target, evidence.baseline, args.faithfulness)
    command = reproduce_command(explanation.report, args.image, args.out, args.colormap, args.opacity, args.html,
                                args.png, args.faithfulness)
    write_explanation(explanation, Path(args.out), args.colormap, args.opacity, html_report=args.html,
                      panel_png=args.png, faithfulness=scores, command=command)
    report = explanation.report
    print(f"{report['class_name']} (class {report['class_index']}, p = {report['probability']:.3f}) at layer "
          f"{report['layer']}: {report['forward_passes']['masked']} masked passes, "
          f"{sum(report['timings'].values()):.2f} s; wrote {args.out}")
    for warning in report["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    """``compare IMAGE``: explain the image on both sides (one θ, λ and weight mode), compare the
    two explanations, then write ``a/``, ``b/``, the difference and ``compare.json`` (and
    ``compare.html``) to ``--out``. Bad input on one side names it: ``side B: …``."""
    image = Path(args.image)
    if not image.is_file():
        raise InputError(f"No such image file: {image}.")
    picture = load_image(str(image))
    with side("A"):
        model_a = load_model(args.model_a, device=args.device)
    model_b = model_a
    if args.model_b.strip() != args.model_a.strip():
        with side("B"):
            model_b = load_model(args.model_b, device=args.device)
    explanations = explain_pair(picture, model_a, model_b, args.class_a, args.class_b, args.layer_a, args.layer_b,
                                theta=args.theta, strength=args.strength, weights=args.weights)
    comparison = compare(*explanations, image=picture)
    out = Path(args.out)
    side_commands = tuple(reproduce_command(e.report, args.image, str(out / name.lower()), args.colormap, args.opacity,
                                            args.html) for name, e in zip(SIDES, explanations, strict=True))
    write_comparison(comparison, out, args.colormap, args.opacity, html_report=args.html,
                     command=comparison_command(comparison, args.image, args.out, args.colormap, args.opacity,
                                                args.html), side_commands=side_commands)
    for name, explanation in zip(SIDES, explanations, strict=True):
        report = explanation.report
        print(f"{name}: {report['class_name']} (class {report['class_index']}, p = {report['probability']:.3f}), "
              f"{report['model']} at layer {report['layer']}")
        for warning in report["warnings"]:
            print(f"warning: side {name}: {warning}", file=sys.stderr)
    for key in RECORD_KEYS:
        print(f"  {LABELS[key]}: {format_value(key, comparison.record[key])}")
    print(f"wrote {args.out}")
    return 0


def run_layers(args: argparse.Namespace) -> int:
    """``layers``: the model's useful candidate target layers (``--all``: every one) with their
    map size ``K×h×w`` (and layout when not ``N×K×h×w`` maps), the default marked with ``*``."""
    model = load_model(args.model, device="cpu")
    for name in model.candidate_layers(useful=not args.all):
        found = model.layer_shape(name)
        shape = "×".join(str(d) for d in found.map_shape)
        layout = "" if found.layout.kind == "maps" else f", {found.layout.describe()}"
        print(f"{'*' if name == model.default_layer else ' '} {name}  ({shape}{layout})")
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
    explain_cmd.add_argument("--faithfulness", type=int, nargs="?", const=DEFAULT_STEPS, default=None,
                             metavar="STEPS", help="also score every map (Average Drop, Deletion, Insertion; "
                             f"curve steps, default {DEFAULT_STEPS}) into the report")
    explain_cmd.add_argument("--out", required=True, help="output folder")
    explain_cmd.add_argument("--html", action="store_true",
                             help="also write report.html: one self-contained page to keep or forward")
    explain_cmd.add_argument("--png", action="store_true", help="also write panel.png: every map on one slide")
    explain_cmd.set_defaults(handler=run_explain)

    compare_cmd = commands.add_parser("compare", help="compare two explanations of one image (two models or two "
                                      "classes) side by side")
    compare_cmd.add_argument("image", help="path of the image to explain")
    for name in ("a", "b"):
        compare_cmd.add_argument(f"--model-{name}", default=BUNDLED,
                                 help=f"side {name.upper()}'s model: {BUNDLED} (bundled), timm:NAME or "
                                 "torchvision:NAME")
        compare_cmd.add_argument(f"--layer-{name}", default=None, help="target layer name (default: the model's)")
    compare_cmd.add_argument("--class-a", type=int, default=None, help="target class index (default: A's top-1)")
    compare_cmd.add_argument("--class-b", type=int, default=None,
                             help="target class index (default: B's top-1 when the models differ, else the one "
                             "model's most probable class other than A's)")
    compare_cmd.add_argument("--theta", type=float, default=10.0,
                             help="denoising percentile θ in [0, 100] (both sides)")
    compare_cmd.add_argument("--strength", type=float, default=1.0, help="fusion strength λ ≥ 0 (both sides)")
    compare_cmd.add_argument("--weights", choices=WEIGHT_MODES, default="reference")
    compare_cmd.add_argument("--device", choices=DEVICES, default="auto")
    compare_cmd.add_argument("--colormap", choices=list(COLORMAPS), default="jet")
    compare_cmd.add_argument("--opacity", type=float, default=0.5)
    compare_cmd.add_argument("--out", required=True, help="output folder")
    compare_cmd.add_argument("--html", action="store_true",
                             help="also write compare.html (and each side's report.html): one self-contained page")
    compare_cmd.set_defaults(handler=run_compare)

    layers_cmd = commands.add_parser("layers", help="list a model's candidate target layers")
    layers_cmd.add_argument("--model", default=BUNDLED)
    layers_cmd.add_argument("--all", action="store_true", help="every candidate layer, not only the useful ones")
    layers_cmd.set_defaults(handler=run_layers)

    evaluate_cmd = commands.add_parser("evaluate", help="score the methods' faithfulness over a folder of images "
                                       "(one process, or every rank of torchrun)")
    evaluate_cmd.add_argument("folder", metavar="DIR",
                              help="folder of images (a leading class index in a name is the label)")
    evaluate_cmd.add_argument("--model", default=BUNDLED, help=f"{BUNDLED} (bundled), timm:NAME or torchvision:NAME")
    evaluate_cmd.add_argument("--methods", type=_listed(parse_methods), default=list(DEFAULT_METHODS),
                              help=f"comma-separated, from {', '.join(METHOD_NAMES)} "
                              f"(default: {','.join(DEFAULT_METHODS)})")
    evaluate_cmd.add_argument("--metrics", type=_listed(evaluate.parse_metrics), default=None,
                              help=f"comma-separated, from {', '.join(evaluate.METRICS)} (default: all; on the CPU "
                              "all but road, whose imputations are slow there)")
    evaluate_cmd.add_argument("--limit", type=int, default=None, help="only the first N images (by file name)")
    evaluate_cmd.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="deletion / insertion steps")
    evaluate_cmd.add_argument("--theta", type=float, default=10.0, help="denoising percentile θ in [0, 100]")
    evaluate_cmd.add_argument("--strength", type=float, default=1.0, help="fusion strength λ ≥ 0")
    evaluate_cmd.add_argument("--device", choices=DEVICES, default="auto",
                              help="under torchrun, cuda means cuda:LOCAL_RANK for each rank")
    evaluate_cmd.add_argument("--road-solver", choices=("auto", "scipy", "torch"), default="auto",
                              help="ROAD's imputation solver (auto: torch on a GPU, scipy on the CPU)")
    evaluate_cmd.add_argument("--out", required=True, help="results JSON (resumed when it exists)")
    evaluate_cmd.set_defaults(handler=run_evaluate)
    from .sanity_cli import add_sanity_command

    add_sanity_command(commands)
    return parser


def run_evaluate(args: argparse.Namespace) -> int:
    """``evaluate DIR``: the faithfulness table over a folder (see :func:`fusioncam.evaluate.run_evaluate`)."""
    return evaluate.run_evaluate(Path(args.folder), Path(args.out), model=args.model, methods=args.methods,
                                 metrics=args.metrics, steps=args.steps, theta=args.theta, strength=args.strength,
                                 device=args.device, limit=args.limit, road_solver=args.road_solver)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    tune_host_allocator()
    try:
        return handler(args)
    except USER_ERRORS as error:
        print(f"fusioncam: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fusioncam: interrupted", file=sys.stderr)
        return 130
