"""Words on the page: the status summary, the top-5 label and the "how to read this" note."""

from __future__ import annotations

from typing import Any

from fusioncam.explain import GradientEvidence

INTRO = """# Fusion-CAM explorer
See **why** an image classifier made its prediction. Upload a picture (or pick an example), and the
app colours the parts of the image that drove the decision, computed by two different families
of methods and then fused into one map: **Fusion-CAM**
([arXiv 2603.05386](https://arxiv.org/abs/2603.05386)).
*Your uploads are kept for one hour, for your browser session only; other visitors never see them.*"""

HOW_TO_READ = """
**Colours.** Each picture is the image with a heat map on top: warm colours (red/yellow in the default
*jet* map) mark regions that pushed the model **towards** the chosen class; blue marks regions that
hardly mattered. Values run from 0 to 1 within each map, so compare *where* maps are warm, not how warm.

**The six maps, left to right.**
1. **Grad-CAM** follows the model's gradients: fast (one pass), but often blurry or spread out.
2. **Denoised Grad-CAM** removes the weakest θ % of Grad-CAM (the *denoising θ* slider).
3. **Score-CAM** hides parts of the image and measures how the model's confidence changes: slower,
   but grounded in what the model actually does with each region.
4. **Combined** mixes 2 and 3, each weighted by how much keeping only *its* region raises the
   model's confidence (the β weights in the chart).
5. **Fusion-CAM**, the final answer: where the combined map and Score-CAM agree it keeps the stronger
   value; where they disagree it averages them. The *fusion strength λ* slider sets how strongly
   disagreement pulls towards the average (λ = 0 simply keeps the maximum).
6. **Agreement** shows, on a fixed 0–1 scale, where the combined map and Score-CAM agree (pale grey)
   or disagree (pink to purple); see *The agreement map* below.

**Weights chart.** β is the gain in the model's confidence when only that map's region is kept,
compared with a blank image; γ is each map's share in Fusion-CAM. A negative or tiny β means that
map's region alone did not convince the model; the app warns you when the weights are unreliable.

**Trust, but check.** These maps explain *this* model's decision, not the truth about the image. If
the warm region is the background (snow behind a wolf, water behind a boat), the model may rely on
context rather than the object itself. Try another class in *Explain which class* to see what the
model would look at for it.
"""

HOW_TO_READ_AGREEMENT = """
**The agreement map.** Fusion-CAM compares the two weighted views pixel by pixel: the combined map
(gradients and regions together) and Score-CAM (regions alone). The agreement S is 1 where they give a
pixel the same importance and falls as they differ, faster at a larger fusion strength λ:
S = 1 − λ × (the difference), never below 0. It is drawn in its own colours, over a grey copy of the
image, on the same 0–1 scale for every image: **pale** where the views agree, **pink** below the mark at
S = 0.9, **deep purple** where they disagree strongly. The card and the summary give the share of the
image below 0.9. Where the views agree, Fusion-CAM keeps their stronger value; where they disagree it
moves towards their average, so a large pink area means the fused map there is a compromise: look at
maps ③ and ④ to see which view puts the importance where. Each view is first scaled by its weight γ
(the chart), so where both views are strong, unequal γ's alone make them disagree. At λ = 0 the map is
pale everywhere (the fusion then just keeps the maximum). Moving λ, the colour map or the opacity redraws these maps in
your browser at once; the server learns the new λ a quarter of a second after you stop.
"""

STALE_SCORES = ("A new explanation started while these maps were being scored, so their scores were not shown; "
                "press the button again to score the new maps.")
WAITING = "Upload an image or click an example to start; the maps appear in a few seconds."

FAITHFULNESS_INTRO = """
**Does the map really show what the model used?** A heat map can look convincing and still be wrong, so
this tab tests each map against the model itself. *Drop* keeps only the parts of the image a map
highlights and measures how much the model's confidence falls (lower is better); *Confidence up* says
whether that cut-out made the model even more sure. *Deletion* removes the pixels the map ranks most
important first, a little at a time: if the map is right, the confidence collapses quickly and the area
under the curve is small. *Insertion* starts from a blurred image and puts the most important pixels
back first: a good map makes the confidence climb fast, so a larger area is better. The numbers judge
the maps of **this** image and class; try a few images before drawing conclusions.
"""


def model_info(any_model: bool) -> str:
    """The model picker's hint: which models work offline, and whether other names are accepted."""
    hint = "The bundled models work offline; the others download once."
    return hint + (" Any timm:NAME or torchvision:NAME works too." if any_model else "")


def top5_label(top5: list[dict[str, Any]]) -> dict[str, float]:
    """Top-5 entries (``index``, ``name``, ``probability``) as ``{label: probability}`` for ``gr.Label``."""
    return {f"{entry['name']} (#{entry['index']})": entry["probability"] for entry in top5}


def progress_summary(evidence: GradientEvidence, class_names: list[str]) -> str:
    """The status line while Score-CAM is still running."""
    name = class_names[evidence.target]
    return (f"### Explaining **{name}** (class {evidence.target})\n"
            "Grad-CAM is ready. Score-CAM is now masking the image channel by channel (the slow part); "
            "the other maps follow.")


def summary(report: dict[str, Any], disagreement: float) -> str:
    """The headline for a finished explanation: class, confidence, denoising, where the two views
    disagree (``disagreement``: the share of pixels with ``S < 0.9`` at the current λ), cost and
    warnings."""
    denoise, passes = report["denoise"], report["forward_passes"]
    seconds = sum(report["timings"].values())
    lines = [
        f"### Explaining **{report['class_name']}** (class {report['class_index']}), "
        f"model confidence {report['probability']:.1%}",
        f"Model `{report['model']}`, layer `{report['layer']}` · denoising at θ = {denoise['theta']:g} removed "
        f"{denoise['zeroed_pixels']:,} pixels ({denoise['zeroed_fraction']:.0%}) of Grad-CAM · "
        f"{passes['total']:,} network passes in {seconds:.1f} s on {report['device']}.",
        f"At λ = {report['params']['strength']:g} the gradient and region views disagree (S < 0.9) on "
        f"{disagreement:.0%} of the pixels.",
    ]
    lines += [f"> ⚠️ {warning}" for warning in report["warnings"]]
    return "\n\n".join(lines)


def faithfulness_status(report: dict[str, Any], probability: float, n_steps: int) -> str:
    """Which explanation the faithfulness scores belong to (so an older result is recognisable)."""
    params = report["params"]
    return (f"Scores for **{report['class_name']}** (class {report['class_index']}) on model `{report['model']}`, "
            f"p(x) = {probability:.1%} · θ = {params['theta']:g}, λ = {params['strength']:g}, "
            f"{params['weights']} weights · {n_steps} deletion/insertion steps.")
