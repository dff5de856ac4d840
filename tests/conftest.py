"""Shared fixtures: tiny deterministic models for unit tests, the bundled model for integration."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

from fusioncam import LoadedModel, load_model

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# Compiling a scoring network costs CI's 2 cores seconds per model: off for every test but
# tests/test_compile.py, which turns it on again (fusioncam/compiled.py reads this at each use).
os.environ.setdefault("FUSIONCAM_COMPILE", "0")


class TinyNet(nn.Module):
    """A small deterministic CNN: conv → ReLU → conv (``features``, 8 channels) → ReLU → pool → fc."""

    def __init__(self, num_classes: int = 5, seed: int = 0) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.stem = nn.Conv2d(3, 6, 3, padding=1)
        self.features = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.act = nn.ReLU(inplace=True)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, num_classes)
        with torch.no_grad():
            for parameter in self.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.stem(x))
        x = self.act(self.features(x))   # in-place ReLU right after the target layer
        return self.fc(self.pool(x).flatten(1))


@pytest.fixture
def tiny_model() -> LoadedModel:
    """A fresh 5-class TinyNet on 32×32 inputs, target layer ``features``."""
    return LoadedModel.from_module(TinyNet(), name="tiny", input_size=(32, 32), mean=(0.5, 0.5, 0.5),
                                   std=(0.25, 0.25, 0.25), class_names=[f"c{i}" for i in range(5)],
                                   default_layer="features")


@pytest.fixture
def tiny_image() -> torch.Tensor:
    """A deterministic 40×48 RGB uint8 image with structure (a bright square on noise)."""
    generator = torch.Generator().manual_seed(1)
    image = (torch.rand(40, 48, 3, generator=generator) * 120).to(torch.uint8)
    image[8:24, 10:30] = 230
    return image.numpy()


@pytest.fixture(scope="session")
def bundled_model() -> LoadedModel:
    """The bundled EfficientNet-Lite0 on the CPU (loaded once per test session)."""
    return load_model("efficientnet_lite0", device="cpu")


@pytest.fixture(scope="session")
def cat_path() -> Path:
    return ASSETS / "cat.jpg"
