"""No stale pictures, by construction: a stage or re-fusion of an older explanation of a browser
session changes nothing once a newer explanation has started (handlers driven directly, on a
tiny model, with a stand-in for Gradio's request)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("gradio")

from fusioncam.models import LoadedModel
from fusioncam.ui import compute, handlers
from fusioncam.ui.catalog import ModelCache
from fusioncam.ui.session import Generations, Session

SPEC = "tiny"
REFINE = ("jet", 0.5)


@pytest.fixture
def page(tiny_model: LoadedModel, tiny_image: np.ndarray, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Handlers that find the tiny model under the spec ``tiny``, two image files A and B, and a
    request of one browser session."""
    cache = ModelCache(loader=lambda spec: tiny_model)
    monkeypatch.setattr(handlers, "MODELS", cache)
    monkeypatch.setattr(compute, "MODELS", cache)
    monkeypatch.setattr(handlers, "GENERATIONS", Generations())
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    Image.fromarray(tiny_image).save(a)
    Image.fromarray(255 - tiny_image[::-1]).save(b)
    return {"a": str(a), "b": str(b), "request": SimpleNamespace(session_hash="visitor-1")}


def _explain(image: str, session: Session | None, request: Any, theta: float = 10) -> Any:
    """The handler's generator for ``image`` with default options."""
    return handlers.explain(image, SPEC, "top", "default", theta, 1.0, "reference", "mean", "gradcam", "scorecam",
                            128, *REFINE, session, request, progress=lambda *args, **kwargs: None)


def _run(image: str, session: Session | None, request: Any) -> Session:
    *_, last = _explain(image, session, request)
    return last[0]


def _refine(session: Session, request: Any, theta: float, strength: float) -> tuple:
    return handlers.refine(session, theta, strength, "reference", "gradcam", *REFINE, request)


def _skipped(outputs: tuple) -> bool:
    return all(isinstance(value, dict) and value.get("__type__") == "update" and len(value) == 1
               for value in outputs)


def test_moves_during_a_new_explanation_leave_the_old_one_alone(page: dict[str, Any]) -> None:
    request = page["request"]
    session_a = _run(page["a"], None, request)
    explaining_b = _explain(page["b"], session_a, request)
    preview = next(explaining_b)                      # B's gradient maps are out; its Score-CAM is next
    scorecam, combined, fused, agreement = preview[5:9]          # no map of A stays on the page:
    assert scorecam is None and combined is None                 # the static cards are emptied,
    for card in (fused, agreement):                              # the live ones blanked at B's generation
        assert "l1" not in card and card["generation"] > session_a.generation
    assert _skipped(_refine(session_a, request, theta=30, strength=1.0))   # θ move on A's snapshot
    assert _skipped(_refine(session_a, request, theta=10, strength=3.0))   # λ move on A's snapshot
    *_, finished = explaining_b
    session_b = finished[0]
    assert session_b.request.image_digest != session_a.request.image_digest
    assert _skipped(_refine(session_a, request, theta=30, strength=1.0))
    refined = _refine(session_b, request, theta=30, strength=2.0)
    assert refined[0].report["params"]["strength"] == 2.0 and refined[0].generation == session_b.generation


def test_a_late_refusion_of_the_old_image_cannot_overwrite_the_new_one(page: dict[str, Any],
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    request = page["request"]
    session_a = _run(page["a"], None, request)
    slow_refuse = compute.refuse

    def b_starts_meanwhile(*args: Any) -> Any:        # θ re-fusion of A running when B is uploaded
        result = slow_refuse(*args)
        handlers.GENERATIONS.begin(handlers.session_key(request))
        return result

    monkeypatch.setattr(compute, "refuse", b_starts_meanwhile)
    assert _skipped(_refine(session_a, request, theta=40, strength=1.0))


def test_a_superseded_explanation_changes_nothing_after_its_preview(page: dict[str, Any]) -> None:
    request = page["request"]
    explaining_a = _explain(page["a"], None, request)
    next(explaining_a)
    session_b = _run(page["b"], None, request)        # B started (and finished) while A's Score-CAM ran
    assert all(_skipped((value,)) for value in next(explaining_a))   # A's result is dropped, B's stays
    assert list(explaining_a) == []
    assert handlers.GENERATIONS.is_current("visitor-1", session_b.generation)


def test_sessions_have_their_own_generations(page: dict[str, Any]) -> None:
    first, second = page["request"], SimpleNamespace(session_hash="visitor-2")
    session_first = _run(page["a"], None, first)
    _run(page["b"], None, second)
    refined = _refine(session_first, first, theta=20, strength=1.0)
    assert refined[0].report["denoise"]["theta"] == 20


def test_a_click_while_the_upload_explains_the_same_image_does_not_run_it_twice(page: dict[str, Any]) -> None:
    """The upload explains by itself; a click on Explain before it finished (the session still
    empty) used to start a second Score-CAM that blanked the first one's maps when it began."""
    request = page["request"]
    by_upload = _explain(page["a"], None, request)
    preview = next(by_upload)                               # A's Score-CAM is next
    by_click = list(_explain(page["a"], None, request))
    assert len(by_click) == 1 and _skipped(by_click[0])     # nothing run, nothing blanked
    *_, finished = by_upload
    session_a = finished[0]
    assert handlers.GENERATIONS.is_current("visitor-1", session_a.generation)
    assert preview[7]["generation"] == session_a.generation


def test_a_different_click_or_a_later_one_still_explains(page: dict[str, Any]) -> None:
    request = page["request"]
    by_upload = _explain(page["a"], None, request)
    next(by_upload)
    with_new_theta = _explain(page["a"], None, request, theta=30)      # settings changed meanwhile: run it
    assert not _skipped(next(with_new_theta))
    again = _explain(page["a"], None, request)                          # the first A is no longer the newest
    assert not _skipped(next(again))
    for generator in (by_upload, with_new_theta, again):
        list(generator)
    session = _run(page["a"], None, request)                            # nothing running: a click runs
    assert handlers.GENERATIONS.is_current("visitor-1", session.generation)


def test_a_dropped_explanation_gives_its_claim_back(page: dict[str, Any]) -> None:
    request = page["request"]
    by_upload = _explain(page["a"], None, request)
    next(by_upload)
    by_upload.close()                                       # the visitor left, or Gradio cancelled it
    assert not _skipped(next(_explain(page["a"], None, request)))


def test_setting_the_explained_image_again_keeps_its_class(page: dict[str, Any]) -> None:
    """Opening a shared link sets the image the session already explains: its class stays (a new
    image, or a new model, starts again from the top class)."""
    request = page["request"]
    *_, last = handlers.explain(page["a"], SPEC, "3", "default", 10, 1.0, "reference", "mean", "gradcam", "scorecam",
                                128, *REFINE, None, request, progress=lambda *args, **kwargs: None)
    session = last[0]
    assert session.request.target == 3

    def again(image: str, handler: Any = handlers.explain_new_image) -> Any:
        *_, final = handler(image, SPEC, "3", "default", 10, 1.0, "reference", "mean", "gradcam", "scorecam", 128,
                            *REFINE, session, request, progress=lambda *args, **kwargs: None)
        return final[0]

    assert again(page["a"]).request.target == 3
    assert again(page["b"]).request.target is None                     # a new image: the top class
    assert again(page["a"], handlers.explain_new_model).request.target is None
