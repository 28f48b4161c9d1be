"""Shared fixtures: tiny models and synthetic, separable image data."""
from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest
import torch

from headstart.data import from_arrays

# Tests never write to the user's feature cache.
os.environ["HEADSTART_CACHE"] = tempfile.mkdtemp(prefix="headstart-test-cache-")


def separable_images(n_per_class: int = 24, classes: int = 3, size: int = 16, seed: int = 0) -> tuple:
    """Images whose class is written in their mean colour: any backbone can separate them."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    palette = rng.integers(0, 256, size=(classes, 3))
    for c in range(classes):
        noise = rng.normal(0, 12, size=(n_per_class, size, size, 3))
        xs.append(np.clip(palette[c] + noise, 0, 255).astype(np.uint8))
        ys += [c] * n_per_class
    return np.concatenate(xs), np.array(ys)


@pytest.fixture
def tiny_data():
    x, y = separable_images()
    xt, yt = separable_images(8, seed=1)
    return from_arrays(x, y, classes=["a", "b", "c"], val_fraction=0.25, seed=0, x_test=xt, y_test=yt, name="tiny")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
