"""Fusion-CAM: denoised Grad-CAM and Score-CAM, combined and fused pixel by pixel (arXiv 2603.05386)."""

from .compare import Comparison, compare
from .explain import MAP_NAMES, Explanation, explain
from .images import InputError, load_image
from .models import LoadedModel, ModelError, load_model

__all__ = ["MAP_NAMES", "Comparison", "Explanation", "InputError", "LoadedModel", "ModelError", "compare", "explain",
           "load_image", "load_model"]
__version__ = "0.1.0"
