"""The page's downloads, written by :mod:`fusioncam.export`: a zip of every map (``.npy`` and PNG
overlay) with ``report.json``, and the one-file HTML report."""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path

from fusioncam.explain import Explanation
from fusioncam.export import report_html, reproduce_command, write_explanation
from fusioncam.metrics import MapScores

UPLOADED_IMAGE = "IMAGE"   # the page does not know the uploaded file's path: the command names it so


def _download_path(explanation: Explanation, folder: str | Path, suffix: str) -> Path:
    """A fresh path ``folder/export-…/fusioncam-MODEL-CLASS.suffix``."""
    report = explanation.report
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{report['model']}-{report['class_name']}").strip("-").lower()
    return Path(tempfile.mkdtemp(prefix="export-", dir=folder)) / f"fusioncam-{slug}.{suffix}"


def export_zip(explanation: Explanation, folder: str | Path, colormap: str = "jet", opacity: float = 0.5) -> Path:
    """Write the explanation into a new zip inside ``folder`` and return its path."""
    target = _download_path(explanation, folder, "zip")
    with tempfile.TemporaryDirectory() as staging:
        write_explanation(explanation, Path(staging), colormap, opacity)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(staging).iterdir()):
                archive.write(path, arcname=path.name)
    return target


def export_html(explanation: Explanation, folder: str | Path, colormap: str = "jet", opacity: float = 0.5,
                faithfulness: Mapping[str, MapScores] | None = None, image_name: str = UPLOADED_IMAGE) -> Path:
    """Write the one-file HTML report (with the faithfulness table when the maps were scored) into a
    new file inside ``folder`` and return its path; its command names the image ``image_name``."""
    target = _download_path(explanation, folder, "html")
    steps = len(next(iter(faithfulness.values())).deletion) - 1 if faithfulness else None
    command = reproduce_command(explanation.report, image_name, "OUT", colormap, opacity, faithfulness_steps=steps)
    target.write_text(report_html(explanation, colormap, opacity, faithfulness, command), encoding="utf-8")
    return target
