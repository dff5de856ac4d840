"""Everything written to disk for one explanation; the CLI and the app's downloads both call this.

- ``NAME.npy`` (the map, float32 H×W in [0, 1]) and ``NAME.png`` (the map over the image,
  ``(1 − opacity) · image + opacity · colour(map)``) for each of the six maps, and ``report.json``
  (the explanation's report, plus a ``faithfulness`` block when the maps were scored);
- ``report.html`` (optional): one self-contained page — every picture an inline JPEG data URI,
  no script, no font or style from the network — with the image, the six captioned maps, class
  and top-5, the β/γ weights, the parameters and warnings, the faithfulness table when it was
  computed and the command that reproduces it; printed on A4 landscape the seven pictures fill
  the first page;
- ``panel.png`` (optional): the image and the six captioned maps on one 1920×1080 canvas (a slide).

A comparison of two explanations (:func:`write_comparison`) writes ``a/`` and ``b/`` as above,
``difference.npy`` (float32 in [−1, 1] on the original image's grid), ``difference.png`` (drawn
on the image, its legend beneath), ``compare.json`` (the record) and optionally ``compare.html``
(both sides on one self-contained page).

Files appear in the output folder only once all of them are written (staged, then renamed).
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import shlex
import shutil
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from . import __version__
from .compare import EXPLANATIONS, LABELS, RECORD_KEYS, SIDES, Comparison, format_value
from .explain import MAP_NAMES, Explanation
from .methods import MAP_DESCRIPTIONS, METHOD_NAMES, map_titles
from .metrics import MapScores
from .render import agreement_overlay, difference_legend, difference_overlay, dim_outside, overlay, save_png

PANEL_SIZE = (1920, 1080)     # a 16:9 slide, in pixels
FONT = cv2.FONT_HERSHEY_DUPLEX  # the panel's captions
HTML_SIDE = 640               # the longer side of the pictures in report.html
HTML_QUALITY = 90             # their JPEG quality
FAITHFULNESS_COLUMNS = ("Map", "p(masked)", "Drop (%) ↓", "Confidence up", "Deletion AUC ↓", "Insertion AUC ↑")
PARAMETER_LABELS = {"theta": "denoising θ (percentile)", "strength": "fusion strength λ", "weights": "weight mode",
                    "baseline": "masking baseline", "gradient_method": "gradient method",
                    "region_method": "region method", "top_k": "top-k channels"}


def faithfulness_record(scores: Mapping[str, MapScores]) -> dict[str, Any]:
    """The JSON form of scored maps: the curve steps ``n`` and, per map, ``O = p(m(x, L))_c``, its drop
    ``max(0, Y − O) / Y``, whether ``O > Y``, and the Deletion / Insertion AUCs."""
    first = next(iter(scores.values()))
    return {"steps": len(first.deletion) - 1, "probability": first.probability,
            "maps": {key: {"masked_probability": s.masked_probability, "drop": s.drop, "increase": s.increase,
                           "deletion": s.deletion_auc, "insertion": s.insertion_auc} for key, s in scores.items()}}


def report_record(explanation: Explanation, faithfulness: Mapping[str, MapScores] | None = None) -> dict[str, Any]:
    """What ``report.json`` holds: the explanation's report, with the faithfulness block when scored."""
    if not faithfulness:
        return dict(explanation.report)
    return {**explanation.report, "faithfulness": faithfulness_record(faithfulness)}


def reproduce_command(report: Mapping[str, Any], image: str, out: str = "OUT", colormap: str = "jet",
                      opacity: float = 0.5, html_report: bool = True, panel_png: bool = False,
                      faithfulness_steps: int | None = None) -> str:
    """The ``python -m fusioncam explain`` command line (shell-quoted) that recomputes this report:
    every parameter spelled out (numbers in their exact shortest form), the class and layer
    included even where they were the defaults."""
    params = report["params"]
    device = str(report.get("device", "cpu")).split(":")[0]
    words = ["python", "-m", "fusioncam", "explain", image, "--model", report["model"], "--layer", report["layer"],
             "--class", str(report["class_index"]), "--theta", repr(float(params["theta"])),
             "--strength", repr(float(params["strength"])), "--weights", params["weights"],
             "--baseline", params["baseline"], "--gradient-method", params["gradient_method"],
             "--region-method", params["region_method"]]
    if params.get("top_k") is not None and params["region_method"] == "scorecam-topk":
        words += ["--top-k", str(params["top_k"])]
    if faithfulness_steps is not None:
        words += ["--faithfulness", str(faithfulness_steps)]
    words += ["--device", device, "--colormap", colormap, "--opacity", repr(float(opacity)), "--out", out]
    words += ["--html"] if html_report else []
    words += ["--png"] if panel_png else []
    return shlex.join(words)


def write_explanation(explanation: Explanation, out_dir: Path, colormap: str = "jet", opacity: float = 0.5, *,
                      html_report: bool = False, panel_png: bool = False,
                      faithfulness: Mapping[str, MapScores] | None = None, command: str | None = None) -> list[Path]:
    """Write ``NAME.npy`` and ``NAME.png`` for every map and ``report.json`` (plus ``report.html``
    and ``panel.png`` when asked) into ``out_dir``, all or nothing; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fusioncam-", dir=out_dir))
    try:
        for name in MAP_NAMES:
            np.save(staging / f"{name}.npy", explanation.maps[name])
            picture = map_overlay(explanation.image, name, explanation.maps[name], colormap, opacity)
            save_png(picture, str(staging / f"{name}.png"))
        (staging / "report.json").write_text(json.dumps(report_record(explanation, faithfulness), indent=2))
        if html_report:
            (staging / "report.html").write_text(report_html(explanation, colormap, opacity, faithfulness, command),
                                                 encoding="utf-8")
        if panel_png:
            save_png(panel(explanation, colormap, opacity), str(staging / "panel.png"))
        written = []
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
            written.append(out_dir / path.name)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def comparison_command(comparison: Comparison, image: str, out: str = "OUT", colormap: str = "jet",
                       opacity: float = 0.5, html_report: bool = True) -> str:
    """The ``python -m fusioncam compare`` command line (shell-quoted) that recomputes this
    comparison: each side's model, layer and class and the shared θ, λ and weight mode spelled out."""
    report_a, report_b = (explanation.report for explanation in comparison.explanations)
    params = report_a["params"]
    words = ["python", "-m", "fusioncam", "compare", image]
    for name, report in zip(SIDES, (report_a, report_b), strict=True):
        flag = name.lower()
        words += [f"--model-{flag}", report["model"], f"--layer-{flag}", report["layer"], f"--class-{flag}",
                  str(report["class_index"])]
    words += ["--theta", repr(float(params["theta"])), "--strength", repr(float(params["strength"])),
              "--weights", params["weights"], "--device", str(report_a.get("device", "cpu")).split(":")[0],
              "--colormap", colormap, "--opacity", repr(float(opacity)), "--out", out]
    return shlex.join(words + (["--html"] if html_report else []))


def write_comparison(comparison: Comparison, out_dir: Path, colormap: str = "jet", opacity: float = 0.5, *,
                     html_report: bool = False, command: str | None = None,
                     side_commands: tuple[str | None, str | None] = (None, None)) -> list[Path]:
    """Write ``a/`` and ``b/`` (each as :func:`write_explanation`, with ``report.html`` when
    ``html_report``), ``difference.npy``, ``difference.png``, ``compare.json`` and with
    ``html_report`` ``compare.html`` into ``out_dir``, all or nothing (an older ``a/`` or ``b/``
    there is replaced); returns the written top-level paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fusioncam-", dir=out_dir))
    try:
        for name, explanation, side_command in zip(SIDES, comparison.explanations, side_commands, strict=True):
            write_explanation(explanation, staging / name.lower(), colormap, opacity, html_report=html_report,
                              command=side_command)
        np.save(staging / "difference.npy", comparison.difference)
        save_png(difference_picture(comparison, opacity), str(staging / "difference.png"))
        (staging / "compare.json").write_text(json.dumps(comparison.record, indent=2))
        if html_report:
            (staging / "compare.html").write_text(compare_html(comparison, colormap, opacity, command),
                                                  encoding="utf-8")
        written = []
        for path in sorted(staging.iterdir()):
            target = out_dir / path.name
            if path.is_dir() and target.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
            written.append(target)
        return written
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def difference_picture(comparison: Comparison, opacity: float = 0.5, side: int | None = None) -> np.ndarray:
    """The difference drawn on the original image (at most ``side`` pixels on the longer side),
    the region not compared dimmed, with its legend strip beneath (labels name A's and B's models
    when they differ, else their classes)."""
    photo = _thumbnail(comparison.image, side)
    picture = difference_overlay(photo, comparison.difference, opacity, comparison.shared)
    report_a, report_b = (explanation.report for explanation in comparison.explanations)
    key = "model" if report_a["model"] != report_b["model"] else "class_name"
    legend = difference_legend(picture.shape[1], f"A ({report_a[key]})", f"B ({report_b[key]})")
    return np.vstack([picture, legend])


def _thumbnail(image: Image.Image, side: int | None) -> Image.Image:
    """An RGB copy of ``image`` at most ``side`` pixels on the longer side (``None``: as it is)."""
    photo = image.convert("RGB")
    if side is not None:
        photo.thumbnail((side, side), Image.Resampling.LANCZOS)
    return photo


def compare_html(comparison: Comparison, colormap: str = "jet", opacity: float = 0.5,
                 command: str | None = None) -> str:
    """One self-contained page for a comparison (same rules as :func:`report_html`): the image,
    both Fusion-CAM maps drawn on it, the difference with its legend, the record with one
    sentence per number, then each side's maps, top-5, weights, parameters and warnings
    (ids prefixed ``a-`` / ``b-``)."""
    photo = _thumbnail(comparison.image, HTML_SIDE)
    figures = [f'<figure id="figure-image"><img src="{_data_uri(np.asarray(photo))}" alt="the image">'
               f"<figcaption><b>Image</b> as given ({comparison.image.width}×{comparison.image.height} px)"
               "</figcaption></figure>"]
    leads, sides = [], []
    for index, (name, explanation) in enumerate(zip(SIDES, comparison.explanations, strict=True)):
        report, prefix = explanation.report, f"{name.lower()}-"
        values, inside = comparison.on_image(index)
        drawn = dim_outside(overlay(photo, values, colormap, opacity), photo, inside)
        described = _esc(f"{report['class_name']} · {report['model']} · layer {report['layer']}")
        unseen = "" if inside.all() else " (dimmed: not seen by this model)"
        figures.append(f'<figure id="figure-fusion-{name.lower()}" class=main><img src="{_data_uri(drawn)}" '
                       f'alt="side {name} Fusion-CAM"><figcaption><b>{name}: Fusion-CAM</b> — {described}'
                       f"{unseen}</figcaption></figure>")
        leads.append(f'<b>{name}</b>: <span id="{prefix}class" data-index="{report["class_index"]}">'
                     f"{_esc(report['class_name'])}</span> (class {report['class_index']}, p = "
                     f'<span data-value="{_data_value(report["probability"])}">{report["probability"]:.3f}</span>)'
                     f' · model <span id="{prefix}model">{_esc(report["model"])}</span>'
                     f' · layer <span id="{prefix}layer">{_esc(report["layer"])}</span>')
        titles = map_titles(report["params"]["gradient_method"])
        details = "".join(f"<section>{part}</section>" for part in (
            _top5_html(report, prefix), _weights_html(report, prefix), _parameters_html(report, prefix),
            _warnings_html(report, prefix)))
        sides.append(f'<section id="side-{name.lower()}"><h2>Side {name}: {described}</h2>'
                     f'<div class="maps">{_figures_html(explanation, titles, colormap, opacity, prefix)}</div>'
                     f'<div class="details">{details}</div></section>')
    difference = _data_uri(difference_picture(comparison, opacity, HTML_SIDE))
    figures.append(f'<figure id="figure-difference"><img src="{difference}" alt="the difference of the two maps">'
                   "<figcaption><b>Difference</b> N(F_A) − N(F_B) on the region both models saw: "
                   "red where A looks more, blue where B looks more</figcaption></figure>")
    rows = _rows([[f"<th>{_esc(LABELS[key])}</th>",
                   f'<td data-record="{key}" data-value="{_data_value(comparison.record[key])}">'
                   f"{_esc(format_value(key, comparison.record[key]))}</td>",
                   f"<td class=note>{_esc(EXPLANATIONS[key])}</td>"] for key in RECORD_KEYS])
    sections = [f"<section class=wide><h2>The comparison in numbers</h2><table class=record id=record>{rows}"
                "</table></section>"]
    if command:
        sections.append(f"<section class=wide><h2>Reproduce</h2><pre id=command><code>{_esc(command)}</code>"
                        "</pre></section>")
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    report_a, report_b = (explanation.report for explanation in comparison.explanations)
    return _COMPARE_PAGE.format(
        title=_esc(f"Fusion-CAM comparison: {report_a['class_name']} ({report_a['model']}) vs "
                   f"{report_b['class_name']} ({report_b['model']})"),
        leads="<br>\n".join(leads), figures="\n".join(figures), sections="\n".join(sections),
        sides="\n".join(sides),
        footer=_esc(f"fusioncam {__version__} · {report_a['device']} · one λ for both sides "
                    f"({report_a['params']['strength']:g}) · made {made}"))


def map_overlay(image: Image.Image, name: str, values: np.ndarray, colormap: str, opacity: float) -> np.ndarray:
    """A map drawn over the image as the page draws it: the agreement map ``S`` on its own fixed
    0–1 scale and colours (:func:`~fusioncam.render.agreement_overlay`), every saliency map in
    ``colormap``."""
    if name == "agreement":
        return agreement_overlay(image, values, opacity)
    return overlay(image, values, colormap, opacity)


def _pictures(explanation: Explanation, colormap: str, opacity: float, side: int) -> dict[str, np.ndarray]:
    """The image (key ``image``) and each map's overlay, at most ``side`` pixels on the longer side."""
    photo = explanation.image.convert("RGB")
    photo.thumbnail((side, side), Image.Resampling.LANCZOS)
    pictures = {"image": np.asarray(photo)}
    pictures.update({name: map_overlay(photo, name, explanation.maps[name], colormap, opacity) for name in MAP_NAMES})
    return pictures


def _data_uri(picture: np.ndarray) -> str:
    """A JPEG data URI of an RGB uint8 picture."""
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=HTML_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _data_value(value: object) -> str:
    """A value's exact JSON text, escaped for an HTML attribute (what the page says it shows)."""
    return _esc(json.dumps(value))


def _rows(cells: Sequence[Sequence[str]]) -> str:
    return "\n".join("<tr>" + "".join(cells_row) + "</tr>" for cells_row in cells)


WEIGHT_ROWS = (("beta", "denoised", "β denoised (confidence gain)"), ("beta", "region", "β Score-CAM"),
               ("beta", "combined", "β combined"), ("beta", "denoised_hat", "β̂ denoised (share in combined)"),
               ("beta", "region_hat", "β̂ Score-CAM (share in combined)"),
               ("beta", "baseline_probability", "p_b (baseline probability)"),
               ("gamma", "combined", "γ combined (share in Fusion-CAM)"), ("gamma", "region", "γ Score-CAM"))


def report_html(explanation: Explanation, colormap: str = "jet", opacity: float = 0.5,
                faithfulness: Mapping[str, MapScores] | None = None, command: str | None = None) -> str:
    """The one-file HTML report (see the module docstring); every text from the user or the model
    is escaped, and each shown number carries its exact value in ``data-value``."""
    report = report_record(explanation, faithfulness)
    titles = map_titles(report["params"]["gradient_method"])
    sections = [f"<section>{part}</section>" for part in (_top5_html(report), _weights_html(report),
                                                           _parameters_html(report), _warnings_html(report))]
    if "faithfulness" in report:
        sections.append(f"<section class=wide>{_faithfulness_html(report['faithfulness'], titles)}</section>")
    if command:
        sections.append(f"<section class=wide><h2>Reproduce</h2><pre id=command><code>{_esc(command)}</code>"
                        "</pre></section>")
    passes, timings = report["forward_passes"], report["timings"]
    made = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return _PAGE.format(
        title=_esc(f"Fusion-CAM: {report['class_name']} ({report['model']})"),
        class_index=report["class_index"], class_name=_esc(report["class_name"]),
        probability=f"{report['probability']:.3f}", probability_value=_data_value(report["probability"]),
        model=_esc(report["model"]), layer=_esc(report["layer"]),
        figures=_figures_html(explanation, titles, colormap, opacity), sections="\n".join(sections),
        footer=_esc(f"fusioncam {__version__} · {report['device']} · {passes['total']} forward passes "
                    f"({passes['masked']} masked) · {sum(timings.values()):.2f} s · made {made}"),
    )


def _figures_html(explanation: Explanation, titles: Mapping[str, str], colormap: str, opacity: float,
                  prefix: str = "") -> str:
    """The image and the six maps, each an inline JPEG with its caption (Fusion-CAM framed); every
    ``id`` starts with ``prefix``."""
    pictures = _pictures(explanation, colormap, opacity, HTML_SIDE)
    width, height = explanation.image.size
    figures = [f'<figure id="{prefix}figure-image"><img src="{_data_uri(pictures["image"])}" alt="the image">'
               f"<figcaption><b>Image</b> as given ({width}×{height} px)</figcaption></figure>"]
    for name in MAP_NAMES:
        title = _esc(titles[name])
        figures.append(f'<figure id="{prefix}figure-{name}"{" class=main" if name == "fusion" else ""}>'
                       f'<img src="{_data_uri(pictures[name])}" alt="{title} map">'
                       f"<figcaption><b>{title}</b> — {_esc(MAP_DESCRIPTIONS[name])}</figcaption></figure>")
    return "\n".join(figures)


def _top5_html(report: Mapping[str, Any], prefix: str = "") -> str:
    rows = _rows([[f"<td>{_esc(e['name'])}</td>", f"<td>{e['index']}</td>",
                   f'<td data-value="{_data_value(e["probability"])}">{e["probability"]:.4f}</td>']
                  for e in report["top5"]])
    return (f"<h2>Top-5 predictions</h2><table class=numbers id={prefix}top5><tr><th>class</th><th>index</th>"
            f"<th>probability</th></tr>{rows}</table>")


def _weights_html(report: Mapping[str, Any], prefix: str = "") -> str:
    """β, β̂, p_b and γ, each cell marked ``data-beta=KEY`` or ``data-gamma=KEY``."""
    blocks = {"beta": report["betas"], "gamma": report["gammas"]}
    rows = _rows([[f"<th>{_esc(label)}</th>", f'<td data-{kind}="{key}" data-value="{_data_value(blocks[kind][key])}">'
                   f"{blocks[kind][key]:.4f}</td>"] for kind, key, label in WEIGHT_ROWS])
    return f"<h2>Contribution weights</h2><table class=numbers id={prefix}weights>{rows}</table>"


def _parameters_html(report: Mapping[str, Any], prefix: str = "") -> str:
    """Model, layer and every fusion parameter, each cell marked ``data-param=KEY``."""
    parameters = {"model": report["model"], "layer": report["layer"], **report["params"]}
    rows = _rows([[f"<th>{_esc(PARAMETER_LABELS.get(key, key))}</th>",
                   f'<td data-param="{_esc(key)}" data-value="{_data_value(value)}">'
                   f'{_esc("—" if value is None else value)}</td>'] for key, value in parameters.items()])
    return f"<h2>Parameters</h2><table id={prefix}parameters>{rows}</table>"


def _warnings_html(report: Mapping[str, Any], prefix: str = "") -> str:
    items = "".join(f"<li>{_esc(w)}</li>" for w in report["warnings"]) or "<li>none</li>"
    return f"<h2>Warnings</h2><ul id={prefix}warnings>{items}</ul>"


def _faithfulness_html(record: Mapping[str, Any], titles: Mapping[str, str]) -> str:
    """The faithfulness table: one row per scored map under :data:`FAITHFULNESS_COLUMNS`."""
    head = "".join(f"<th>{_esc(c)}</th>" for c in FAITHFULNESS_COLUMNS)
    rows = _rows([[f"<td>{_esc(titles.get(key) or METHOD_NAMES.get(key, key))}</td>",
                   f"<td>{v['masked_probability']:.4f}</td>", f"<td>{100 * v['drop']:.2f}</td>",
                   f"<td>{'yes' if v['increase'] else 'no'}</td>", f"<td>{v['deletion']:.4f}</td>",
                   f"<td>{v['insertion']:.4f}</td>"] for key, v in record["maps"].items()])
    return (f"<h2>Faithfulness ({record['steps']} steps; p(x) = {record['probability']:.4f})</h2>"
            f"<table class=numbers id=faithfulness><tr>{head}</tr>{rows}</table>")


_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
@page {{ size: A4 landscape; margin: 8mm; }}
* {{ box-sizing: border-box; }}
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; margin: 16px;
       color: #1b1b1b; background: #fff; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }}
h2 {{ font-size: 15px; margin: 14px 0 6px; }}
.lead {{ margin: 0 0 10px; }}
.maps {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; }}
figure {{ margin: 0; break-inside: avoid; }}
figure img {{ width: 100%; height: auto; display: block; border: 1px solid #ddd; }}
figure.main img {{ border: 2px solid #d62728; }}
figcaption {{ font-size: 12px; line-height: 1.3; margin-top: 3px; }}
.details {{ display: grid; grid-template-columns: repeat(auto-fit, minmax(320px, 1fr)); gap: 0 24px; }}
.details .wide {{ grid-column: 1 / -1; }}
table {{ border-collapse: collapse; font-size: 12px; }}
th, td {{ border-bottom: 1px solid #e3e3e3; padding: 2px 8px 2px 0; text-align: left; }}
table.numbers td {{ font-variant-numeric: tabular-nums; }}
ul {{ font-size: 12px; padding-left: 18px; }}
pre {{ white-space: pre-wrap; word-break: break-all; font-size: 11px; background: #f4f4f4; padding: 6px; }}
footer {{ font-size: 11px; color: #666; margin-top: 12px; }}
.sides {{ display: grid; grid-template-columns: 1fr 1fr; gap: 0 20px; }}
.sides .maps {{ gap: 6px; }}
.sides .details {{ grid-template-columns: 1fr; }}
.compared {{ display: grid; grid-template-columns: repeat(4, 1fr); gap: 10px; }}
table.record td.note {{ color: #444; }}
@media print {{
  body {{ margin: 0; }}
  .maps {{ grid-template-columns: repeat(4, 1fr); gap: 4mm; }}
  figure img {{ max-height: 80mm; width: auto; max-width: 100%; }}
  .details {{ break-before: page; }}
}}
</style>
</head>
"""
_PAGE = _HEAD + """<body>
<header>
<h1>Fusion-CAM explanation</h1>
<p class="lead"><b id="class" data-index="{class_index}">{class_name}</b> (class {class_index}),
p = <span id="probability" data-value="{probability_value}">{probability}</span> · model <span id="model">{model}</span>
· layer <span id="layer">{layer}</span></p>
</header>
<main>
<section class="maps">
{figures}
</section>
<div class="details">
{sections}
</div>
</main>
<footer>{footer}</footer>
</body>
</html>
"""


_COMPARE_PAGE = _HEAD + """<body>
<header>
<h1>Fusion-CAM comparison</h1>
<p class="lead">{leads}</p>
</header>
<main>
<section class="compared">
{figures}
</section>
<div class="details">
{sections}
</div>
<div class="sides">
{sides}
</div>
</main>
<footer>{footer}</footer>
</body>
</html>
"""


def _ascii(text: str) -> str:
    """``text`` in the ASCII that OpenCV's Hershey fonts draw (accents dropped, others as ``?``)."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii") or "?"


def _fitted_scale(text: str, scale: float, width: int, thickness: int = 1) -> float:
    """``scale``, shrunk so that ``text`` drawn in :data:`FONT` is at most ``width`` pixels wide."""
    (w, _h), _ = cv2.getTextSize(_ascii(text), FONT, scale, thickness)
    return scale * min(1.0, width / w) if w else scale


def _put_text(canvas: np.ndarray, text: str, origin: tuple[int, int], scale: float, width: int,
              thickness: int = 1) -> None:
    """Draw ``text`` at ``origin`` (its baseline's left end), shrunk to fit ``width`` pixels."""
    scale = _fitted_scale(text, scale, width, thickness)
    cv2.putText(canvas, _ascii(text), origin, FONT, scale, (20, 20, 20), thickness, cv2.LINE_AA)


def panel(explanation: Explanation, colormap: str = "jet", opacity: float = 0.5,
          size: tuple[int, int] = PANEL_SIZE) -> np.ndarray:
    """The image and the six maps, each captioned, on one white ``size = (width, height)`` canvas:
    a title line over a 4×2 grid, centred vertically, whose last cell lists the weights; RGB uint8."""
    width, height = size
    report = explanation.report
    titles = map_titles(report["params"]["gradient_method"])
    canvas = np.full((height, width, 3), 255, np.uint8)
    title_h, caption_h, gap = height // 12, height // 20, width // 100
    _put_text(canvas, f"Fusion-CAM: {report['class_name']} (class {report['class_index']}, "
                      f"p = {report['probability']:.2f})   model {report['model']}, layer {report['layer']}",
              (gap, int(title_h * 0.7)), title_h / 60, width - 2 * gap, 2)
    cell_w = (width - gap) // 4
    pictures = _pictures(explanation, colormap, opacity, max(width, height))
    photo_h, photo_w = pictures["image"].shape[:2]
    fit = min((cell_w - gap) / photo_w, ((height - title_h) / 2 - caption_h - gap) / photo_h)
    shown_w, shown_h = max(1, int(photo_w * fit)), max(1, int(photo_h * fit))
    row_h = shown_h + caption_h + gap
    top = title_h + (height - title_h - 2 * row_h) // 2
    cells = [("image", "Image")] + [(name, titles[name]) for name in MAP_NAMES]
    for index, (key, caption) in enumerate(cells):
        x = gap + (index % 4) * cell_w + (cell_w - gap - shown_w) // 2
        y = top + (index // 4) * row_h
        canvas[y:y + shown_h, x:x + shown_w] = cv2.resize(pictures[key], (shown_w, shown_h),
                                                          interpolation=cv2.INTER_AREA)
        _put_text(canvas, caption, (x, y + shown_h + int(caption_h * 0.75)), caption_h / 40, shown_w)
    betas, gammas, params = report["betas"], report["gammas"], report["params"]
    lines = [f"beta-hat: denoised {betas['denoised_hat']:.3f}, Score-CAM {betas['region_hat']:.3f}",
             f"gamma: combined {gammas['combined']:.3f}, Score-CAM {gammas['region']:.3f}",
             f"theta {params['theta']:g}, lambda {params['strength']:g}, weights {params['weights']}",
             f"baseline {params['baseline']}, {params['gradient_method']} + {params['region_method']}"]
    scale = min(_fitted_scale(line, caption_h / 50, cell_w - gap) for line in lines)
    x, y = gap + 3 * cell_w, top + row_h + caption_h
    for line in lines:
        _put_text(canvas, line, (x, y), scale, cell_w - gap)
        y += int(caption_h * 1.1)
    return canvas
