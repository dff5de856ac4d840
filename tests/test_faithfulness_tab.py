"""The "Faithfulness" tab: its handler on a real session, and its endpoint through gradio_client.

Cheap on purpose: ``scorecam-topk`` with 16 channels and 8 deletion/insertion steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

gr = pytest.importorskip("gradio")
client_module = pytest.importorskip("gradio_client")

from fusioncam.ui import handlers  # noqa: E402
from fusioncam.ui.faithfulness import HEADERS  # noqa: E402
from fusioncam.ui.session import Session  # noqa: E402

CAT = Path(__file__).resolve().parent.parent / "assets" / "cat.jpg"
STEPS = 8
SHOWN = ["Grad-CAM", "denoised Grad-CAM", "Score-CAM", "combined", "Fusion-CAM"]
pytestmark = pytest.mark.slow


class Recorder:
    """Stands in for ``gr.Progress``: keeps every ``(fraction, desc)`` it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, str]] = []

    def __call__(self, fraction: Any, desc: str = "", **_options: Any) -> None:
        self.calls.append((fraction, desc))


@pytest.fixture(scope="module")
def session() -> Session:
    """The cat explained by the page's own handler (cheap path), as its ``gr.State`` value."""
    outputs = list(handlers.explain(str(CAT), "efficientnet_lite0", "top", "default", 10, 1.0, "reference", "mean",
                                    "gradcam", "scorecam-topk", 16, "jet", 0.5, None, request=None,
                                    progress=Recorder()))
    return outputs[-1][0]


def test_the_page_has_the_tab_and_stable_element_ids() -> None:
    import app

    config = app.demo.get_config_file()
    ids = {component.get("props", {}).get("elem_id") for component in config["components"]}
    assert {"faithfulness-run", "faithfulness-table", "deletion-curves", "insertion-curves",
            "faithfulness-status", "faithfulness-steps"} <= ids
    labels = {component.get("props", {}).get("label") for component in config["components"]
              if component.get("type") == "tabitem"}
    assert {"Explain", "Faithfulness"} <= labels
    assert any(d.get("api_name") == "faithfulness" for d in config["dependencies"])


def test_scores_every_map_shown_with_progress(session: Session, monkeypatch: pytest.MonkeyPatch) -> None:
    progress = Recorder()       # the scoring stage reports through a gr.Progress made where it runs
    monkeypatch.setattr(gr, "Progress", lambda *args, **kwargs: progress)
    status, table, deletion, insertion = handlers.faithfulness(session, STEPS, ["gradcam++"], progress=Recorder())
    assert list(table.columns) == HEADERS
    assert list(table["Map"]) == [*SHOWN, "Grad-CAM++"]
    assert table["Deletion AUC ↓"].between(0, 1).all() and table["Insertion AUC ↑"].between(0, 1).all()
    assert session.report["class_name"] in status and f"{STEPS} deletion/insertion steps" in status
    for figure in (deletion, insertion):
        assert len(figure.data) == len(table) and all(len(trace.y) == STEPS + 1 for trace in figure.data)
    fractions = [fraction for fraction, _ in progress.calls]
    assert fractions[-1] == pytest.approx(1.0) and len(fractions) > 2
    assert all("Faithfulness" in desc for _, desc in progress.calls)


def test_nothing_explained_or_bad_steps_give_one_plain_sentence(session: Session) -> None:
    with pytest.raises(gr.Error, match="Explain an image first"):
        handlers.faithfulness(None, STEPS, [], progress=Recorder())
    with pytest.raises(gr.Error, match="curve steps must be") as error:
        handlers.faithfulness(session, 10_000, [], progress=Recorder())
    assert "\n" not in str(error.value)
    with pytest.raises(gr.Error, match="unknown gradient method"):
        handlers.faithfulness(session, STEPS, ["os.system"], progress=Recorder())


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    import app

    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None,
                    **app.LAUNCH_OPTIONS)
    try:
        yield client_module.Client(app.demo.local_url, verbose=False)
    finally:
        app.demo.close()


def test_endpoint_scores_the_sessions_explanation(client: Any) -> None:
    with pytest.raises(client_module.exceptions.AppError, match="Explain an image first"):
        client.predict(steps=STEPS, extra_methods=[], api_name="/faithfulness")
    explained = client.predict(client_module.handle_file(str(CAT)), region_method="scorecam-topk", top_k=16,
                               api_name="/explain")
    status, table, deletion, insertion = client.predict(steps=STEPS, extra_methods=[], api_name="/faithfulness")
    assert explained[-3]["class_name"] in status
    assert table["headers"] == HEADERS and [row[0] for row in table["data"]] == SHOWN
    for plot in (deletion, insertion):
        traces = json.loads(plot["plot"])["data"]
        assert [trace["name"].rsplit(" (", 1)[0] for trace in traces] == SHOWN
