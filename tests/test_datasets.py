"""Data files: formats, keys, labels optional, factories, and clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from dise_cli.datasets import DataSpec, load_data
from dise_cli.errors import InputError, UsageError
from dise_cli.judging import targets_batch_major

TESTS = str(Path(__file__).resolve().parent)
X = torch.randn(10, 3)
Y = torch.arange(10) % 2


def make_dataset():
    return torch.utils.data.TensorDataset(X, Y)


def make_tensors():
    return X, Y


@pytest.mark.parametrize("writer", ["pt_dict", "pt_tuple", "pt_tensor", "safetensors", "npz"])
def test_formats(tmp_path, writer):
    if writer == "pt_dict":
        path = tmp_path / "d.pt"
        torch.save({"x": X, "y": Y}, path)
    elif writer == "pt_tuple":
        path = tmp_path / "d.pth"
        torch.save((X, Y), path)
    elif writer == "pt_tensor":
        path = tmp_path / "d.pt"
        torch.save(X, path)
    elif writer == "safetensors":
        path = tmp_path / "d.safetensors"
        save_file({"x": X, "y": Y}, str(path))
    else:
        path = tmp_path / "d.npz"
        np.savez(path, x=X.numpy(), y=Y.numpy())
    data = load_data(DataSpec(path=path))
    assert torch.equal(data.x, X) and len(data) == 10 and len(data.sha256) == 64
    assert data.y is None if writer == "pt_tensor" else torch.equal(data.y, Y)


def test_custom_keys_y0_and_time_grid(tmp_path):
    save_file({"inputs": X, "labels": Y, "t": torch.tensor([0.0, 1.0])}, str(tmp_path / "a.safetensors"))
    data = load_data(DataSpec(path=tmp_path / "a.safetensors", x_key="inputs", y_key="labels"))
    assert torch.equal(data.y, Y) and data.t.tolist() == [0.0, 1.0]
    save_file({"y0": X}, str(tmp_path / "b.safetensors"))
    data = load_data(DataSpec(path=tmp_path / "b.safetensors"))
    assert torch.equal(data.x, X) and data.y is None


@pytest.mark.parametrize("factory", ["test_datasets:make_dataset", "test_datasets:make_tensors"])
def test_data_factory(factory):
    data = load_data(DataSpec(factory=factory, code_path=(TESTS,)))
    assert torch.equal(data.x, X) and torch.equal(data.y, Y)
    assert data.sha256 == load_data(DataSpec(factory=factory, code_path=(TESTS,))).sha256


@pytest.mark.parametrize("tensors,kw,needle", [
    ({"inputs": X}, {}, "has no key 'x' (keys: inputs); name the inputs with --x-key"),
    ({"x": X}, {"y_key": "label"}, "has no key 'label' (--y-key)"),
    ({"x": X, "y": Y[:5]}, {}, "has 10 samples but 'y' has shape (5,)"),
    ({"x": torch.zeros(0, 3)}, {}, "holds no samples"),
    ({"x": torch.zeros(4, 2, dtype=torch.bool)}, {}, "has dtype torch.bool"),
    ({"x": X, "t": torch.tensor([1.0])}, {}, "must be [T] (T >= 2) or [N, T]"),
])
def test_bad_contents(tmp_path, tensors, kw, needle):
    save_file(tensors, str(tmp_path / "d.safetensors"))
    with pytest.raises(InputError) as err:
        load_data(DataSpec(path=tmp_path / "d.safetensors", **kw))
    assert needle in str(err.value) and "d.safetensors" in str(err.value)


@pytest.mark.parametrize("name,content,needle", [
    ("d.pt", b"junk" * 20, "not a readable .pt file"),
    ("d.npz", b"junk" * 20, "not a readable .npz file"),
    ("d.safetensors", b"junk" * 20, "not a readable .safetensors file"),
    ("d.csv", b"1,2", "unknown format '.csv'"),
    ("d.pt", b"", "is empty"),
])
def test_unreadable(tmp_path, name, content, needle):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(InputError, match=needle):
        load_data(DataSpec(path=tmp_path / name))


def test_no_data_and_bad_factory():
    with pytest.raises(UsageError, match="--data"):
        load_data(DataSpec())
    with pytest.raises(UsageError, match="--data-factory"):
        load_data(DataSpec(factory="test_datasets:X", code_path=(TESTS,)))


def test_targets_time_major_or_batch_major():
    y_tm = torch.randn(3, 5, 2)              # [T, N, D] as odeint returns
    assert targets_batch_major(y_tm, n=5, n_t=3, time_major=None, data_name="d").shape == (5, 3, 2)
    y_bm = torch.randn(5, 3, 2)
    assert targets_batch_major(y_bm, n=5, n_t=3, time_major=None, data_name="d") is y_bm
    square = torch.randn(3, 3, 2)            # N == T: ambiguous without the flag
    with pytest.raises(UsageError, match="--time-major"):
        targets_batch_major(square, n=3, n_t=3, time_major=None, data_name="d")
    assert torch.equal(targets_batch_major(square, n=3, n_t=3, time_major=True, data_name="d"), square.transpose(0, 1))
