"""Task figures for models without a right answer, reported per candidate, for the oracle and for
DISE (``--figure``):

- ``nlp``: a density model whose output is log p(x) per sample: the mean negative log-likelihood
  (nats) and bits per dimension (NLP / (D ln 2), D the input's size per sample);
- ``energy``: a sampler whose output is a sample per input: the energy distance between the outputs
  and the reference solve's (or the labels'), 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Székely), in the
  outputs' units; 0 exactly when the two sets coincide as distributions. With ``--figure-data FILE``
  (held-out samples of the distribution the sampler was trained to reach, key ``x``) also the energy
  distance of the outputs to those: what the user's figure of merit is, next to which the solver's
  error is measured.
"""
from __future__ import annotations

import math

import torch

from dise_cli.errors import InputError, UsageError
from dise_cli.files import existing_file

FIGURES = ("nlp", "energy")
ENERGY_SAMPLES = 2048       # larger sets are subsampled (seeded) so the pairwise terms stay cheap


def check_figure(name: str | None, data: str | None = None) -> str | None:
    if name is not None and name not in FIGURES:
        raise UsageError(f"--figure: unknown figure '{name}'; valid: {', '.join(FIGURES)}")
    if data is not None:
        if name != "energy":
            raise UsageError("--figure-data: held-out samples are for --figure energy (a sampler)")
        existing_file(data, "--figure-data")
    return name


def read_figure_data(path: str, output_size: int) -> torch.Tensor:
    """The held-out samples of ``--figure-data`` ([M, F] float32, F the size of one output), subsampled
    (seeded) to the size the energy distance uses."""
    from dise_cli.datasets import read_tensor_file
    tensors = read_tensor_file(existing_file(path, "--figure-data"), "--figure-data")
    if "x" not in tensors:
        raise InputError(f"--figure-data '{path}' has no key 'x' (keys: {', '.join(sorted(tensors)) or 'none'})")
    x = tensors["x"]
    if not isinstance(x, torch.Tensor) or x.dtype == torch.bool or x.is_complex() or x.ndim < 1 or len(x) < 2 or x[0].numel() != output_size:
        raise InputError(f"--figure-data '{path}': 'x' must be samples shaped like one output of the model "
                         f"({output_size} values each, at least 2 samples), got {getattr(x, 'dtype', type(x).__name__)} "
                         f"{tuple(getattr(x, 'shape', ()))}")
    x = x.reshape(len(x), -1)
    if not bool(torch.isfinite(x).all()):
        raise InputError(f"--figure-data '{path}': 'x' has non-finite values")
    return _subsample(x.float(), 2).contiguous()


def nlp(log_p: torch.Tensor, input_dim: int) -> dict[str, float]:
    """``{"nlp", "bits_per_dim"}`` of per-sample log-likelihoods ``[N]`` (non-finite ones left out)."""
    v = log_p.reshape(len(log_p), -1)[:, 0].double()
    v = v[torch.isfinite(v)]
    value = float(-v.mean()) if len(v) else float("inf")
    return {"nlp": value, "bits_per_dim": value / (max(input_dim, 1) * math.log(2))}


def energy_distance(a: torch.Tensor, b: torch.Tensor, seed: int = 0) -> float:
    """The energy distance between two sample sets ``[N, ...]`` and ``[M, ...]`` (V-statistic)."""
    a = _subsample(a.reshape(len(a), -1).double(), seed)
    b = _subsample(b.reshape(len(b), -1).double(), seed + 1)
    keep_a, keep_b = torch.isfinite(a).all(1), torch.isfinite(b).all(1)
    if not bool(keep_a.all()) or not len(a) or not len(b):
        return float("inf")                  # a failed sample is as far as it gets
    b = b[keep_b]
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean() - torch.cdist(b, b).mean())


def figure(kind: str, outputs: torch.Tensor, reference: torch.Tensor, input_dim: int,
           data: torch.Tensor | None = None) -> dict[str, float]:
    """The figure ``kind`` of ``outputs`` (for ``energy``: against ``reference``, and against the
    held-out samples ``data`` where given)."""
    if kind == "nlp":
        return nlp(outputs, input_dim)
    out = {"energy_distance": energy_distance(outputs, reference)}
    if data is not None:
        out["energy_distance_data"] = energy_distance(outputs, data)
    return out


def _subsample(x: torch.Tensor, seed: int) -> torch.Tensor:
    if len(x) <= ENERGY_SAMPLES:
        return x
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:ENERGY_SAMPLES]
    return x[rows]
