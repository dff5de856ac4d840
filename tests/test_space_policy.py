"""The public-Space policy: an allow-list of models, refusal of other hub names on a Space, and
a size budget for the download cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from fusioncam import downloads
from fusioncam.models import BUNDLED, ModelError

gr = pytest.importorskip("gradio")

from fusioncam.ui.catalog import MODEL_CHOICES, model_choices, parse_model  # noqa: E402


def test_locally_any_hub_name_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SPACE_ID", raising=False)
    assert parse_model("timm:resnet18") == "timm:resnet18"
    assert model_choices() == MODEL_CHOICES


def test_a_space_offers_its_allow_list_and_refuses_other_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPACE_ID", "someone/fusion-cam")
    monkeypatch.setenv("FUSIONCAM_MODELS", f"{BUNDLED}, timm:resnet18")
    assert [spec for _, spec in model_choices()] == [BUNDLED, "timm:resnet18"]
    assert parse_model("timm:resnet18") == "timm:resnet18"
    with pytest.raises(ModelError, match="This Space offers only these models"):
        parse_model("timm:vit_huge_patch14_224")
    monkeypatch.setenv("FUSIONCAM_ALLOW_ANY_MODEL", "1")
    assert parse_model("timm:vit_huge_patch14_224") == "timm:vit_huge_patch14_224"


def test_a_space_without_a_list_offers_the_curated_models(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SPACE_ID", "someone/fusion-cam")
    monkeypatch.delenv("FUSIONCAM_MODELS", raising=False)
    monkeypatch.delenv("FUSIONCAM_ALLOW_ANY_MODEL", raising=False)
    assert parse_model(BUNDLED) == BUNDLED
    with pytest.raises(ModelError, match="offers only"):
        parse_model("timm:resnet10t")                         # a real timm name, but not on the list


def _download(path: Path, size: int, age_s: float) -> None:
    if path.suffix:
        path.write_bytes(b"\0" * size)
        files = [path]
    else:
        (path / "blobs").mkdir(parents=True)
        (path / "blobs" / "weights").write_bytes(b"\0" * size)
        files = [path / "blobs" / "weights"]
    stamp = time.time() - age_s
    for file in files:
        os.utime(file, (stamp, stamp))


def test_prune_drops_the_least_recently_used_downloads_until_the_budget_fits(tmp_path: Path) -> None:
    hub, checkpoints = tmp_path / "hub", tmp_path / "checkpoints"
    checkpoints.mkdir()
    _download(hub / "models--timm--old", 4000, age_s=300)
    _download(checkpoints / "resnet50-0676ba61.pth", 3000, age_s=200)
    _download(hub / "models--timm--new", 2000, age_s=10)
    (hub / ".locks").mkdir()                                   # bookkeeping, never counted or deleted
    deleted = downloads.prune(budget=5500, roots=[hub, checkpoints])
    assert deleted == [hub / "models--timm--old"]
    assert (hub / "models--timm--new").exists() and (checkpoints / "resnet50-0676ba61.pth").exists()
    assert (hub / ".locks").exists()
    assert downloads.prune(budget=0, roots=[hub, checkpoints]) == [checkpoints / "resnet50-0676ba61.pth"]
    assert (hub / "models--timm--new").exists()                # the newest is always kept
