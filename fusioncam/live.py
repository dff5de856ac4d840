"""What a web page needs to redo Fusion-CAM's last step itself: the two kept maps, losslessly.

The fusion strength λ enters only METHOD.md §4, pixel arithmetic on two kept maps::

    L1 = γ1 · L_comb,   L2 = γ2 · L_reg,
    S  = clip(1 − λ · |L1 − L2|, 0, 1),
    F  = S · max(L1, L2) + (1 − S) · (L1 + L2) / 2,   Fusion-CAM = N(F).

:func:`live_payload` sends ``L1`` and ``L2`` (computed exactly as :func:`fusioncam.fusion.fuse`
computes them, in float32) once per explanation, so a page can follow a λ slider at frame
rate without asking the server. Everything here is plain JSON; nothing imports gradio.
"""

from __future__ import annotations

import base64
import hashlib
import io
import threading
import weakref
from collections import OrderedDict
from typing import Any

import numpy as np
import torch
from PIL import Image

from .explain import Explanation

DISAGREEMENT_THRESHOLD = 0.9   # S below this counts as "the two views disagree here"
PHOTO_QUALITY = 90             # JPEG quality of the photo under the overlays (the maps stay lossless)


def kept_maps(explanation: Explanation) -> tuple[np.ndarray, np.ndarray]:
    """``(L1, L2) = (γ1 · L_comb, γ2 · L_reg)`` as float32 ``H×W`` arrays, with the very float32
    operations :func:`fusioncam.fusion.fuse` performs, so a fusion from them is bit-identical."""
    gammas = explanation.report["gammas"]
    l1 = gammas["combined"] * torch.from_numpy(np.ascontiguousarray(explanation.maps["combined"], dtype=np.float32))
    l2 = gammas["region"] * torch.from_numpy(np.ascontiguousarray(explanation.maps["scorecam"], dtype=np.float32))
    return l1.numpy(), l2.numpy()


def _float32_base64(values: np.ndarray) -> str:
    """Row-major little-endian float32 bytes, base64: exact, and a typed array in any browser."""
    return base64.b64encode(np.ascontiguousarray(values, dtype="<f4").tobytes()).decode("ascii")


def _jpeg_data_url(photo: Image.Image) -> str:
    """The photo as a ``data:image/jpeg;base64,…`` URL, encoded once per photo object (an anytime
    explanation sends the same photo with every update)."""
    key = id(photo)
    kept = _ENCODED.get(key)
    if kept is not None and kept[0]() is photo:
        return kept[1]
    buffer = io.BytesIO()
    photo.convert("RGB").save(buffer, format="JPEG", quality=PHOTO_QUALITY)
    url = "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    with _ENCODED_LOCK:
        _ENCODED[key] = (weakref.ref(photo), url)
        while len(_ENCODED) > ENCODED_PHOTOS:
            _ENCODED.popitem(last=False)
    return url


ENCODED_PHOTOS = 64   # photos whose data URL is kept (a live one is checked by identity, never by id alone)
_ENCODED: OrderedDict[int, tuple[weakref.ref, str]] = OrderedDict()
_ENCODED_LOCK = threading.Lock()


def live_payload(explanation: Explanation, generation: int, display: Image.Image, colormap: str,
                 opacity: float) -> dict[str, Any]:
    """Everything the page's live map cards need for one explanation, as JSON-able values.

    ``l1``/``l2``: :func:`kept_maps` at the model's resolution (``width × height``, row-major
    float32, base64); ``strength``: the explanation's λ; ``generation``: the server's counter
    (a page never lets a lower one overwrite a picture it drew from a higher one); ``key``:
    the generation plus a digest of the maps, naming exactly this fusion input; ``colormap``
    and ``opacity``: how the server drew it; ``image``: the photo the overlays are drawn on;
    ``progress``: the report's ``{"scorecam_fraction", "final"}`` (a partial, anytime update or the
    exact explanation).
    """
    l1, l2 = kept_maps(explanation)
    digest = hashlib.sha1(l1.tobytes() + l2.tobytes()).hexdigest()[:12]
    height, width = l1.shape
    return {
        "generation": int(generation),
        "key": f"{int(generation)}-{digest}",
        "width": int(width),
        "height": int(height),
        "l1": _float32_base64(l1),
        "l2": _float32_base64(l2),
        "strength": float(explanation.params.strength),
        "colormap": colormap,
        "opacity": float(opacity),
        "image": _jpeg_data_url(display),
        "progress": dict(explanation.report.get("progress", {"scorecam_fraction": 1.0, "final": True})),
    }


def blank_payload(generation: int) -> dict[str, Any]:
    """A payload that empties the cards and raises the page's generation to ``generation``: what to
    send while a new explanation is being computed, so that no late picture of an older one shows."""
    return {"generation": int(generation)}


def disagreement_share(agreement_map: np.ndarray, threshold: float = DISAGREEMENT_THRESHOLD) -> float:
    """The share of pixels where the two views disagree: ``mean(S < threshold)``, in [0, 1]."""
    values = np.asarray(agreement_map)
    if values.size == 0:
        raise ValueError("the agreement map is empty")
    return float(np.count_nonzero(values < threshold)) / values.size
