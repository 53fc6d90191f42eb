"""Task figures for models without a right answer, reported per candidate, for the oracle and for
DISE (``--figure``):

- ``nlp``: a density model whose output is log p(x) per sample: the mean negative log-likelihood
  (nats) and bits per dimension (NLP / (D ln 2), D the input's size per sample);
- ``energy``: a sampler whose output is a sample per input: the energy distance between the outputs
  and the reference solve's (or the labels'), 2 E|X - Y| - E|X - X'| - E|Y - Y'| (Székely), in the
  outputs' units; 0 exactly when the two sets coincide as distributions.
"""
from __future__ import annotations

import math

import torch

from dise_cli.errors import UsageError

FIGURES = ("nlp", "energy")
ENERGY_SAMPLES = 2048       # larger sets are subsampled (seeded) so the pairwise terms stay cheap


def check_figure(name: str | None) -> str | None:
    if name is not None and name not in FIGURES:
        raise UsageError(f"--figure: unknown figure '{name}'; valid: {', '.join(FIGURES)}")
    return name


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


def figure(kind: str, outputs: torch.Tensor, reference: torch.Tensor, input_dim: int) -> dict[str, float]:
    """The figure ``kind`` of ``outputs`` (against ``reference`` for ``energy``)."""
    if kind == "nlp":
        return nlp(outputs, input_dim)
    return {"energy_distance": energy_distance(outputs, reference)}


def _subsample(x: torch.Tensor, seed: int) -> torch.Tensor:
    if len(x) <= ENERGY_SAMPLES:
        return x
    rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))[:ENERGY_SAMPLES]
    return x[rows]
