"""One seed for every random number a user's model may draw: torch's generators (CPU and the device's),
numpy's global one and Python's ``random``, set for a block and put back after it. Runs that must
make the same draws (the model against dise's reproduction, every candidate against the same
encoder, a bundle against the model it rebuilds) all use this."""
from __future__ import annotations

import random
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch


@contextmanager
def seeded(seed: int, device: torch.device | None = None) -> Iterator[None]:
    numpy_state, python_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[device] if device is not None and device.type == "cuda" else []):
            torch.manual_seed(seed)
            np.random.seed(seed % (1 << 32))
            random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)
        random.setstate(python_state)
