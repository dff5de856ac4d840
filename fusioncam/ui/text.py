"""Words on the page: the status summary, the top-5 label and the "how to read this" note."""

from __future__ import annotations

import time
from typing import Any

from fusioncam.explain import GradientEvidence

INTRO = """# Fusion-CAM explorer
See **why** an image classifier made its prediction. Upload a picture (or pick an example), and the
app colours the parts of the image that drove the decision, computed by two different families
of methods and then fused into one map: **Fusion-CAM**
([arXiv 2603.05386](https://arxiv.org/abs/2603.05386)).
*Your uploads are kept for one hour, for your browser session only; other visitors never see them, except
that a link you share shows that one explanation (its image, maps and settings) to whoever holds it, for an hour.*"""

MAP_CAPTIONS = {
    "gradcam": "① Grad-CAM",
    "denoised": "② Denoised",
    "scorecam": "③ Score-CAM",
    "combined": "④ Combined",
    "fusion": "⑤ Fusion-CAM",
    "agreement": "⑥ Agreement",
}


def progress_caption(progress: dict[str, Any]) -> str:
    """How far a partial (anytime) map is: ``Score-CAM: 18 % of channels``."""
    return f"Score-CAM: {int(100 * progress['scorecam_fraction'])} % of channels"


def partial_summary(report: dict[str, Any], seconds: float) -> str:
    """The summary while Score-CAM's maps are partial: how far it is and what changes from here."""
    share = report["progress"]["scorecam_fraction"]
    return (f"### Explaining **{report['class_name']}** ({report['probability']:.1%}) — Score-CAM "
            f"{int(100 * share)} % done after {seconds:.0f} s\n"
            "Maps ③–⑥ are drawn from the channels scored so far (the most telling first) and sharpen "
            "as the rest come in; the last update is the exact explanation.")


def waiting_summary(requests_ahead: int, seconds: float) -> str:
    """What a request waits for before its first Score-CAM pass."""
    others = "1 explanation" if requests_ahead == 1 else f"{requests_ahead} explanations"
    return (f"### Grad-CAM is ready; Score-CAM starts soon\n{others} before yours, about {max(1, round(seconds))} s "
            "(the server shares its processor fairly between visitors).")


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

SHARE_OFF = "Sharing links is turned off on this app."
NOTHING_TO_SHARE = "Explain an image first; then a link can reopen its maps."
SHARE_BUSY = "A new explanation is being computed; share it once its maps are shown."
BAD_LINK = "This shared link has expired or is not valid, so the explorer opens empty."

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


def share_note(expires: float, capacity: int) -> str:
    """Under a new link: who sees what, and until when (``expires``: epoch seconds)."""
    return (f"Anyone with this link sees this explanation (the image, its maps and settings) until "
            f"**{_clock(expires)}**, an hour from when it was first shared; after that the link opens the empty "
            f"explorer. The app keeps at most {capacity} shared explanations, dropping the least recently used "
            "first, so on a busy app a link can end sooner. The link holds nothing but a random key.")


def opened_note(expires: float) -> str:
    """Above a reopened explanation: where it came from, and until when the link works."""
    return f"You opened a shared link: this explanation is kept until **{_clock(expires)}**."


def _clock(epoch: float) -> str:
    """``epoch`` as the server's UTC time of day and date: ``14:05 UTC (4 Dec)``."""
    moment = time.gmtime(epoch)
    return f"{time.strftime('%H:%M', moment)} UTC ({moment.tm_mday} {time.strftime('%b', moment)})"


COMPARE_INTRO = """
**Two explanations side by side.** One image, two sides: each has its own model, class and layer. Side A
starts on the model's top prediction and side B on its second most probable class, so comparing two classes
is one click; pick another model for B and B starts on that model's own top prediction. One fusion strength
λ serves both sides, so the comparison is fair. Between the sides, the **difference** N(F_A) − N(F_B) shows
where A looks more (red) and where B looks more (blue), and the numbers say how alike the two maps are and
whether each side's evidence convinces the other side's model. When the two models see different parts of
the image (Lite0 squashes the whole image; Lite1 and Lite2 crop its centre), both maps are drawn on the whole
image and compared on the part both models saw; the rest is dimmed. Changing one side recomputes that side only.
"""
COMPARE_WAITING = "Upload an image or click an example: both sides are explained, then compared."
COMPARE_MODEL_WAIT = ("Waiting for a free model slot: the app keeps at most two models loaded, and both are in use "
                      "by other requests right now; this comparison starts as soon as one is free.")
COMPARE_NO_IMAGE = "Please upload an image first (or click one of the examples below it); both sides explain it."


def compare_status(recomputed: list[str]) -> str:
    """The Compare tab's status line while ``recomputed`` sides (``"A"``, ``"B"``) are being explained."""
    sides = " and ".join(f"side {name}" for name in recomputed)
    return f"Explaining {sides}: Grad-CAM first, then Score-CAM (the slow part); the comparison follows."


def compare_done(report_a: dict[str, Any], report_b: dict[str, Any], shared: float) -> str:
    """The Compare tab's status line once both sides are compared (``shared``: the region both saw)."""
    seen = ("both models saw the whole image" if shared >= 0.999 else
            f"the maps are compared on the {shared:.0%} of the image both models saw (the rest is dimmed)")
    return (f"Compared **A: {report_a['class_name']}** (`{report_a['model']}`) with **B: {report_b['class_name']}** "
            f"(`{report_b['model']}`) at λ = {report_a['params']['strength']:g}; {seen}.")


def compare_side_progress(name: str, evidence: GradientEvidence, class_names: list[str]) -> str:
    """A side's headline while its Score-CAM runs."""
    return (f"**{name}: {class_names[evidence.target]}** (class {evidence.target}) · Grad-CAM ready, "
            "Score-CAM running…")


def compare_side_summary(name: str, report: dict[str, Any]) -> str:
    """A side's headline: class, confidence, model and layer, γ's; while Score-CAM still runs
    (an anytime update, ``report["progress"]``), how far it is."""
    gammas, progress = report["gammas"], report.get("progress", {"final": True})
    status = ("" if progress["final"] else
              f" · Score-CAM {progress['scorecam_fraction']:.0%} done, maps so far")
    return (f"**{name}: {report['class_name']}** (class {report['class_index']}), confidence "
            f"{report['probability']:.1%} · `{report['model']}`, layer `{report['layer']}` · "
            f"γ combined {gammas['combined']:.2f}, γ Score-CAM {gammas['region']:.2f}{status}")


def comparison_table(record: dict[str, float], labels: dict[str, str], explanations: dict[str, str],
                     values: dict[str, str]) -> str:
    """The comparison's numbers as a Markdown list: name and value (``values``, formatted), then its meaning."""
    return "\n".join(f"- **{labels[key]}: {values[key]}**. {explanations[key]}" for key in record)
