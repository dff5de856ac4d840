"""``torchrun`` evaluation (gloo on the CPU): the same JSON as one process, resumable with another N."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fusioncam.distributed import Ranks, process_group

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT / "assets"                       # five images (and a LICENSE.md that is no image)
FAST = ["--steps", "2", "--methods", "gradcam,layercam", "--device", "cpu"]
TIMINGS = {"seconds", "scoring_seconds", "seconds_per_image", "scoring_seconds_per_image"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}   # the same threads per process in every run (torchrun's default)


def evaluate(out: Path, ranks: int, background: bool = False) -> subprocess.Popen | subprocess.CompletedProcess:
    """``python -m fusioncam evaluate`` (one process) or ``torchrun --standalone --nproc-per-node N``."""
    launcher = [] if ranks == 1 else ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(ranks)]
    command = [sys.executable, *launcher, "-m", "fusioncam", "evaluate", str(ASSETS), "--out", str(out), *FAST]
    if background:
        return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
    return subprocess.run(command, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)


def comparable(data: dict[str, Any]) -> dict[str, Any]:
    """The results without what may differ between launches: ranks, timings, the run's environment."""
    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in TIMINGS | {"rank", "environment", "updated"}}
        return [strip(v) for v in value] if isinstance(value, list) else value
    return strip(data)


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One process over the five asset images."""
    out = tmp_path_factory.mktemp("single") / "r.json"
    result = evaluate(out, 1)
    assert result.returncode == 0, result.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
def test_two_ranks_write_the_json_of_one_process(single: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    result = evaluate(out, 2)
    assert result.returncode == 0, result.stderr
    data = json.loads(out.read_text())
    assert comparable(data) == comparable(single)
    assert [r["file"] for r in data["images"]] == ["astronaut.jpg", "cat.jpg", "cat_and_coffee.jpg", "coffee.jpg",
                                                  "rocket.jpg"]
    assert [r["rank"] for r in data["images"]] == [0, 1, 0, 1, 0]          # round by round
    assert [r["rank"] for r in single["images"]] == [0] * 5
    assert data["environment"]["world_size"] == 2 and single["environment"]["world_size"] == 1
    assert data["environment"]["threads"] == single["environment"]["threads"] == 1
    assert result.stdout.count("| Method |") == 1 and result.stdout.count("| Protocol |") == 1   # rank 0 only
    starts = re.findall(r"(?m)^\s*0%\|\s*\| 0/5 \[[^\]]*\]$", result.stderr.replace("\r", "\n"))
    assert len(starts) == 1 and "5/5" in result.stderr                      # one progress bar, rank 0's


@pytest.mark.slow
def test_interrupted_two_ranks_resumed_by_one_gives_the_same_json(single: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    run = evaluate(out, 2, background=True)
    try:
        deadline = time.monotonic() + 240
        while not out.exists() and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        os.killpg(run.pid, signal.SIGTERM)              # torchrun and both ranks, right after the first round
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
    done = [r["file"] for r in json.loads(out.read_text())["images"]]
    assert 0 < len(done) < 5, done
    result = evaluate(out, 1)
    assert result.returncode == 0, result.stderr
    assert f"{len(done)} of 5 images already done" in result.stderr
    data = json.loads(out.read_text())
    assert comparable(data) == comparable(single)
    assert [r["rank"] for r in data["images"]][len(done):] == [0] * (5 - len(done))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_one_process_is_one_rank_without_a_group() -> None:
    with process_group("cpu") as ranks:
        assert ranks == Ranks(device="cpu") and ranks.main
        assert ranks.gather({"a": 1}) == [{"a": 1}] and ranks.broadcast([2]) == [2]


def test_a_launched_rank_joins_a_gloo_group(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(name, value)
    import torch.distributed as dist

    with process_group("cpu") as ranks:
        assert ranks.backend == "gloo" and dist.is_initialized() and dist.get_world_size() == 1
        assert ranks.gather({"file": "a.jpg"}) == [{"file": "a.jpg"}] and ranks.broadcast(("x", [1])) == ("x", [1])
    assert not dist.is_initialized()
