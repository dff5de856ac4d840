"""The "Faithfulness" view: score every map of one explanation, a table and two curve charts.

One image has one ``Y = p(x)_c``; each map ``L`` has ``O = p(m(x, L))_c``, its drop
``100 · max(0, Y − O) / Y`` (this image's term of Average Drop), whether ``O > Y`` (its term
of Increase in Confidence) and the Deletion / Insertion AUCs (:mod:`fusioncam.metrics`); on
request its ROAD MoRF, LeRF and combined score. :func:`explanation_card` is the protocol card
of those numbers: the baseline it names is the explanation's, the one every metric here uses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import plotly.graph_objects as go

from fusioncam.explain import Explanation
from fusioncam.gradient import GRADIENT_METHODS
from fusioncam.methods import METHOD_NAMES
from fusioncam.metrics import DEFAULT_STEPS, ROAD_NOISE, MapScores, RoadScores, protocol_card, road, score_maps

SHOWN_MAPS = ("gradcam", "denoised", "scorecam", "combined", "fusion")   # the agreement map is no saliency
HEADERS = ["Map", "p(masked)", "Drop (%) ↓", "Confidence up", "Deletion AUC ↓", "Insertion AUC ↑"]
ROAD_HEADERS = ["Map", "ROAD MoRF ↓", "ROAD LeRF ↑", "ROAD combined ↑"]
PALETTE = ("#4C78A8", "#72B7B2", "#F58518", "#54A24B", "#E45756", "#B279A2", "#9D755D", "#BAB0AC")


@dataclass
class FaithfulnessView:
    """What the view shows: ``rows`` under ``HEADERS``, one chart per curve type, the raw scores."""

    rows: list[list[object]]
    deletion: go.Figure
    insertion: go.Figure
    scores: dict[str, MapScores]
    probability: float


def labels(explanation: Explanation, extra_methods: Sequence[str] = ()) -> dict[str, str]:
    """Map key → display name for the maps shown plus extra gradient methods (no repeats)."""
    method = explanation.params.gradient_method
    names = {key: METHOD_NAMES[key] for key in SHOWN_MAPS}
    if method != "gradcam":
        names["gradcam"], names["denoised"] = METHOD_NAMES[method], f"denoised {METHOD_NAMES[method]}"
    for extra in extra_methods:
        if extra not in GRADIENT_METHODS:
            raise ValueError(f"unknown gradient method {extra!r}; choose from {', '.join(GRADIENT_METHODS)}")
        if extra != method:
            names[extra] = METHOD_NAMES[extra]
    return names


def shown_maps(explanation: Explanation, names: dict[str, str]) -> dict[str, np.ndarray]:
    """The maps named in ``names``: the explanation's own, or extra gradient maps from its ``(A, G)``."""
    evidence = explanation.evidence
    return {key: explanation.maps[key] if key in explanation.maps else evidence.gradient_map(key).numpy()
            for key in names}


def score_explanation(explanation: Explanation, extra_methods: Sequence[str] = (), n_steps: int = DEFAULT_STEPS,
                      progress: Callable[[float, str], None] | None = None) -> FaithfulnessView:
    """Score every map shown (and ``extra_methods`` from the kept ``(A, G)``) on the explanation's
    image, class and baseline; ``progress(fraction, text)`` follows the batched forwards."""
    evidence = explanation.evidence
    names = labels(explanation, extra_methods)
    maps = shown_maps(explanation, names)

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total, f"scoring {len(maps)} maps: {done}/{total} perturbed images")

    scores = score_maps(explanation.model, evidence.x, maps, evidence.target, evidence.baseline, n_steps,
                        progress=report)
    probability = next(iter(scores.values())).probability
    rows = [[names[key], round(s.masked_probability, 4), round(100 * s.drop, 2), "yes" if s.increase else "no",
             round(s.deletion_auc, 4), round(s.insertion_auc, 4)] for key, s in scores.items()]
    return FaithfulnessView(rows=rows, deletion=curves_figure(scores, names, "deletion", probability),
                            insertion=curves_figure(scores, names, "insertion", probability),
                            scores=scores, probability=probability)


def curves_figure(scores: dict[str, MapScores], names: dict[str, str], kind: str, probability: float) -> go.Figure:
    """One line per map: ``p_c`` against the fraction of pixels deleted (or inserted), AUC in the legend."""
    deleting = kind == "deletion"
    figure = go.Figure()
    for index, (key, score) in enumerate(scores.items()):
        curve = score.deletion if deleting else score.insertion
        area = score.deletion_auc if deleting else score.insertion_auc
        figure.add_scatter(x=np.linspace(0, 1, len(curve)), y=curve, mode="lines", name=f"{names[key]} ({area:.3f})",
                           line={"color": PALETTE[index % len(PALETTE)], "width": 3 if key == "fusion" else 1.5},
                           hovertemplate=f"{names[key]}<br>%{{x:.0%}} of pixels: p = %{{y:.3f}}<extra></extra>")
    figure.add_hline(y=probability, line_dash="dot", line_color="grey", annotation_text="p(x)",
                     annotation_position="top right")
    title = "Deletion: most salient pixels removed first (lower AUC is better)" if deleting else \
        "Insertion: most salient pixels restored first onto a blur (higher AUC is better)"
    figure.update_layout(title=title, height=360, margin={"l": 50, "r": 10, "t": 40, "b": 40},
                         xaxis={"title": f"fraction of pixels {'deleted' if deleting else 'inserted'}",
                                "tickformat": ".0%", "range": [0, 1]},
                         yaxis={"title": "class probability", "range": [0, 1.02]},
                         legend={"title": {"text": "map (AUC)"}, "orientation": "h", "yanchor": "top", "y": -0.3,
                                 "x": 0}, template="plotly_white")
    return figure


@dataclass
class RoadView:
    """ROAD of every map shown: ``rows`` under :data:`ROAD_HEADERS` and the raw scores."""

    rows: list[list[object]]
    scores: dict[str, RoadScores]


def road_explanation(explanation: Explanation, extra_methods: Sequence[str] = (),
                     progress: Callable[[float, str], None] | None = None) -> RoadView:
    """ROAD (noise σ = :data:`~fusioncam.metrics.ROAD_NOISE`, fixed seed) of every map shown and of
    ``extra_methods``, for the explanation's class; ``progress(fraction, text)`` follows the solves."""
    evidence = explanation.evidence
    names = labels(explanation, extra_methods)
    maps = shown_maps(explanation, names)

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(done / total, f"ROAD of {len(maps)} maps: {done}/{total} imputations and passes")

    scores = road(explanation.model, evidence.x, evidence.target, maps, noise=ROAD_NOISE, progress=report)
    rows = [[names[key], round(s.morf_mean, 4), round(s.lerf_mean, 4), round(s.combined, 4)]
            for key, s in scores.items()]
    return RoadView(rows=rows, scores=scores)


def explanation_card(explanation: Explanation, n_steps: int = DEFAULT_STEPS, include_road: bool = False) -> str:
    """The protocol card of this tab's numbers for ``explanation``: its own masking baseline and
    class, the curve steps, and ROAD's noise when ROAD is included."""
    evidence = explanation.evidence
    target = f"class {evidence.target} ({explanation.model.class_names[evidence.target]}), the explanation's"
    return protocol_card(baseline=evidence.baseline_kind, n_steps=n_steps, size=tuple(evidence.x.shape[-2:]),
                         road_noise=ROAD_NOISE if include_road else None, target=target)
