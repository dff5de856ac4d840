"""A size budget for downloaded model weights: the Hugging Face hub cache (timm) and torch hub's
checkpoints (torchvision) only grow on their own; :func:`prune` deletes the least recently used
downloads until the total fits."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_BUDGET_BYTES = 10 * 1024**3   # 10 GiB; FUSIONCAM_CACHE_BUDGET_GB overrides


@dataclass(frozen=True)
class Download:
    """One downloaded model: a hub repository folder or a checkpoint file."""

    path: Path
    size: int
    last_used: float


def budget_bytes() -> int:
    """The budget from ``FUSIONCAM_CACHE_BUDGET_GB`` (GiB, may be fractional), else the default."""
    value = os.environ.get("FUSIONCAM_CACHE_BUDGET_GB")
    return DEFAULT_BUDGET_BYTES if not value else int(float(value) * 1024**3)


def cache_roots() -> list[Path]:
    """Where timm's hub weights and torchvision's checkpoints are downloaded to."""
    import torch
    from huggingface_hub import constants

    return [Path(constants.HF_HUB_CACHE), Path(torch.hub.get_dir()) / "checkpoints"]


def _size_and_use(path: Path) -> tuple[int, float]:
    """Bytes under ``path`` (links not followed) and the latest access or change time in it."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    stats = [p.stat() for p in files]
    size = sum(s.st_size for s in stats)
    last = max((max(s.st_atime, s.st_mtime) for s in stats), default=path.stat().st_mtime)
    return size, last


def downloads(roots: Iterable[Path]) -> list[Download]:
    """Every model download under ``roots``: ``models--*`` folders of a hub cache, files elsewhere."""
    found = []
    for root in roots:
        if not root.is_dir():
            continue
        for entry in root.iterdir():
            if entry.is_dir() and not entry.name.startswith("models--"):
                continue   # hub bookkeeping (locks, .no_exist, datasets) is not a model
            found.append(Download(entry, *_size_and_use(entry)))
    return found


def prune(budget: int | None = None, roots: Iterable[Path] | None = None) -> list[Path]:
    """Delete the least recently used downloads until all of them take at most ``budget`` bytes;
    the most recently used one is always kept. Returns the deleted paths."""
    budget = budget_bytes() if budget is None else budget
    found = sorted(downloads(cache_roots() if roots is None else roots), key=lambda d: d.last_used)
    total = sum(d.size for d in found)
    deleted = []
    for download in found[:-1]:
        if total <= budget:
            break
        if download.path.is_dir():
            shutil.rmtree(download.path, ignore_errors=True)
        else:
            download.path.unlink(missing_ok=True)
        total -= download.size
        deleted.append(download.path)
    return deleted
