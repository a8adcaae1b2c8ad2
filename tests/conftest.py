"""Shared fixtures: tiny synthetic datasets built in the test, HF offline mode."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# Tests run many tiny tensor ops: one thread is much faster than two on a 2-core machine
# (no oversubscription, no thread wake-ups), and results do not depend on thread timing.
torch.set_num_threads(1)


def make_split(n: int, seed: int, dims=(("text", 10, 8), ("audio", 12, 3), ("vision", 9, 4))):
    """A small learnable split: the label is a tanh of the mean of text dim 0 (+ audio)."""
    from msakit.data.batch import SplitData

    rng = np.random.default_rng(seed)
    x, lens = {}, {}
    for m, L, D in dims:
        lens[m] = rng.integers(1, L + 1, n)
        a = rng.normal(size=(n, L, D)).astype("f4")
        a[np.arange(L)[None, :] >= lens[m][:, None]] = 0
        x[m] = a
    sig = np.array([x["text"][i, : lens["text"][i], 0].mean() for i in range(n)])
    y = np.clip(3 * np.tanh(2 * sig), -3, 3)
    return SplitData(x, lens, y, [f"s{seed}_{i}" for i in range(n)])


@pytest.fixture
def toy_dataset():
    from msakit.data.dataset import MSADataset

    return MSADataset(
        "toy", {"train": make_split(96, 0), "valid": make_split(32, 1), "test": make_split(32, 2)}
    )
