"""The moons target and the noise files of the flow-matching sample, generated here (seeded, no sklearn).

The target is the two-moons shape of ``sample_models.moons.data.make_moons`` (two interleaved half
circles, Gaussian noise of std 0.1), placed as torchcfm's ``sample_moons`` places it: x * 3 - 1.
Run from the repository root; the outputs are committed:
    python -m sample_models.moons_flow.data
Writes beside this file, each with one key ``x`` (float32, [N, 2]; no labels):
    noise.safetensors          512 draws of N(0, I), seed 1: the test noise (dise.yaml's data)
    noise_train.safetensors   1024 draws of N(0, I), seed 2: for profiling and training the selector
    moons_heldout.safetensors 1024 moons samples, seed 3: held out, to compare distributions with
Training (train.py) draws its moons and noise afresh every step from its own generator (seed 0).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from sample_models.moons.data import make_moons

HERE = Path(__file__).resolve().parent
MOONS_NOISE = 0.1
SCALE, SHIFT = 3.0, -1.0            # torchcfm's sample_moons: x * 3 - 1
FILES = (("noise", 512, 1), ("noise_train", 1024, 2), ("moons_heldout", 1024, 3))   # name, N, seed


def sample_moons(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` two-moons samples ``[n, 2]`` float32, half on each moon, shuffled."""
    x, _ = make_moons(n, MOONS_NOISE, gen)
    return x * SCALE + SHIFT


def sample_noise(n: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` draws of N(0, I) ``[n, 2]`` float32, the source distribution."""
    return torch.randn(n, 2, generator=gen)


def main() -> None:
    for name, n, seed in FILES:
        gen = torch.Generator().manual_seed(seed)
        if name == "moons_heldout":
            x, what = sample_moons(n, gen), f"two moons, noise {MOONS_NOISE}, x * 3 - 1"
        else:
            x, what = sample_noise(n, gen), "N(0, I)"
        # One metadata entry: safetensors writes several in no fixed order, and the files should be byte-identical.
        about = json.dumps({"source": what, "seed": seed, "n": n}, sort_keys=True)
        save_file({"x": x.contiguous()}, str(HERE / f"{name}.safetensors"), metadata={"about": about})
        print(f"{name}.safetensors: x {tuple(x.shape)}, {what}, seed {seed}")


if __name__ == "__main__":
    main()
