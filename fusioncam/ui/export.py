"""The download: every map as ``.npy`` and a PNG overlay, plus ``report.json``, in one zip."""

from __future__ import annotations

import re
import tempfile
import zipfile
from pathlib import Path

from fusioncam.cli import write_explanation
from fusioncam.explain import Explanation


def export_zip(explanation: Explanation, folder: str | Path, colormap: str = "jet", opacity: float = 0.5) -> Path:
    """Write the explanation into a new zip inside ``folder`` and return its path."""
    report = explanation.report
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{report['model']}-{report['class_name']}").strip("-").lower()
    target = Path(tempfile.mkdtemp(prefix="export-", dir=folder)) / f"fusioncam-{slug}.zip"
    with tempfile.TemporaryDirectory() as staging:
        write_explanation(explanation, Path(staging), colormap, opacity)
        with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(staging).iterdir()):
                archive.write(path, arcname=path.name)
    return target
