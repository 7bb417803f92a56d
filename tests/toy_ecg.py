"""Toy ECGs for the training tests: label k adds a sine of frequency ``freqs[k]`` to lead k."""

from __future__ import annotations

import numpy as np


def toy_signals(rng: np.random.Generator, n: int, freqs, length: int, fs: float, amplitude: float = 1.0,
                random_phase: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(int8 labels (n, K) with 40 % positives, float32 signals (n, 12, length): noise plus the labels' sines)."""
    y = (rng.random((n, len(freqs))) < 0.4).astype(np.int8)
    t = np.arange(length) / fs
    x = rng.normal(0, 0.3, (n, 12, length)).astype(np.float32)
    for k, f in enumerate(freqs):
        pos = y[:, k] == 1
        phase = rng.uniform(0, 2 * np.pi, (pos.sum(), 1)) if random_phase else 0.0
        x[pos, k] += amplitude * np.sin(2 * np.pi * f * t + phase).astype(np.float32)
    return y, x
