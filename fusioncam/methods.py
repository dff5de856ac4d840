"""The explanation methods' names: the keys the library, the CLI and the page share, and their titles.

Evaluable methods are the gradient family (:mod:`fusioncam.gradient`), the denoised gradient
map, Score-CAM, the combined map and Fusion-CAM; an explanation's six maps are
:data:`~fusioncam.explain.MAP_NAMES`, whose first two are drawn from the explanation's own
gradient method (Grad-CAM unless another one stands in for it).
"""

from __future__ import annotations

METHOD_NAMES = {"gradcam": "Grad-CAM", "gradcam++": "Grad-CAM++", "xgradcam": "XGrad-CAM", "layercam": "LayerCAM",
                "denoised": "denoised Grad-CAM", "scorecam": "Score-CAM", "combined": "combined",
                "fusion": "Fusion-CAM"}
DEFAULT_METHODS = ("gradcam", "gradcam++", "xgradcam", "layercam", "scorecam", "fusion")
SALIENCY_MAPS = ("gradcam", "denoised", "scorecam", "combined", "fusion")   # the agreement map is no saliency
MAP_TITLES = {"gradcam": "Grad-CAM", "denoised": "Denoised Grad-CAM", "scorecam": "Score-CAM",
              "combined": "Combined", "fusion": "Fusion-CAM", "agreement": "Agreement"}
MAP_DESCRIPTIONS = {
    "gradcam": "gradient-weighted activations of the target layer",
    "denoised": "the gradient map with its weakest θ % of pixels set to zero",
    "scorecam": "activations weighted by the class score of each masked input",
    "combined": "β̂-weighted sum of the denoised and Score-CAM maps",
    "fusion": "the combined and Score-CAM maps fused pixel by pixel (γ weights, strength λ)",
    "agreement": "S = clip(1 − λ|γ1·L_comb − γ2·L_reg|, 0, 1): 1 where both maps agree",
}


def parse_methods(text: str) -> list[str]:
    """``"gradcam,scorecam,fusion"`` → a list of known methods, in order, without repeats."""
    methods = list(dict.fromkeys(name.strip().lower() for name in text.split(",") if name.strip()))
    unknown = [name for name in methods if name not in METHOD_NAMES]
    if unknown or not methods:
        raise ValueError(f"unknown method {', '.join(unknown) or '(none)'}; choose from {', '.join(METHOD_NAMES)}")
    return methods


def map_titles(gradient_method: str = "gradcam") -> dict[str, str]:
    """The six maps' titles for an explanation whose gradient map comes from ``gradient_method``."""
    titles = dict(MAP_TITLES)
    if gradient_method != "gradcam":
        titles["gradcam"] = METHOD_NAMES[gradient_method]
        titles["denoised"] = f"Denoised {METHOD_NAMES[gradient_method]}"
    return titles
