"""Every Python block of the README runs as written (from the repository root), so the README
cannot rot: library blocks directly, the ``gradio_client`` block against the app launched in
process (its URL put in place of the README's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)
README_URL = "http://127.0.0.1:7860"


def test_the_readme_has_python_blocks() -> None:
    assert len(BLOCKS) >= 2
    assert any("gradio_client" in block for block in BLOCKS)


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_block_runs_as_written(index: int, monkeypatch: pytest.MonkeyPatch) -> None:
    block = BLOCKS[index]
    monkeypatch.chdir(ROOT)
    if "gradio_client" not in block:
        exec(compile(block, f"README.md python block {index}", "exec"), {"__name__": "readme"})
        return
    import app

    assert README_URL in block
    app.demo.launch(prevent_thread_lock=True, quiet=True, server_name="127.0.0.1", server_port=None,
                    **app.LAUNCH_OPTIONS)
    try:
        code = block.replace(README_URL, app.demo.local_url.rstrip("/"))
        exec(compile(code, f"README.md python block {index}", "exec"), {"__name__": "readme"})
    finally:
        app.demo.close()
