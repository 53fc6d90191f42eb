"""Stratified 4000 / 1000 split of ../shared/data/mnist5k.safetensors into train and test files.

Run once from the repository root; the outputs are committed so that CI and users have them:
    python sample_models/mnist_odenet/prepare_data.py ../shared/data/mnist5k.safetensors
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
SEED = 0
TEST_PER_CLASS = 100


def main(source: str) -> None:
    data = load_file(source)
    x, y = data["x"], data["y"]
    gen = torch.Generator().manual_seed(SEED)
    train_idx, test_idx = [], []
    for c in range(10):
        idx = torch.nonzero(y == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        test_idx.append(idx[:TEST_PER_CLASS])
        train_idx.append(idx[TEST_PER_CLASS:])
    for name, parts in (("train", train_idx), ("test", test_idx)):
        idx = torch.cat(parts)
        idx = idx[torch.randperm(len(idx), generator=gen)]  # mix the classes
        save_file({"x": x[idx].contiguous(), "y": y[idx].contiguous()}, str(HERE / f"{name}.safetensors"),
                  metadata={"source": "mnist5k", "split": name, "seed": str(SEED)})
        print(f"{name}: {len(idx)} samples")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/mnist5k.safetensors")
