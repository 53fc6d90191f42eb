"""Arithmetic that rounds as torchdiffeq's does, so that a sample solved by dise gives bit for bit
what it gives alone in torchdiffeq, whichever samples share its batch: stage sums added in the order
PyTorch's ``sum(-1)`` adds them, and a ``pow`` that does not depend on a sample's place in the batch."""
from __future__ import annotations

import functools
import itertools
import math

import torch

Plan = "int | tuple[Plan, ...]"   # a summation order: an index, or sub-plans added left to right


def _reveal_plan(n_terms: int, dtype: torch.dtype):
    """The tree in which ``x.sum(-1)`` adds rows of ``n_terms`` entries, read from the sums
    themselves (the idea of FPRev, Xie et al. 2024): in a row that is all ones but for a huge ``M``
    at ``i`` and ``-M`` at ``j``, the ones added before ``M`` and ``-M`` meet are absorbed, so the sum
    counts the ones outside the smallest subtree that holds both. From those subtree sizes the tree
    is rebuilt bottom up. None when the sizes do not describe a tree of pairwise additions.
    """
    if n_terms == 1:
        return 0
    mantissa_bits = round(-math.log2(torch.finfo(dtype).eps)) + 1
    big = 2.0 ** (mantissa_bits + n_terms.bit_length() + 1)
    pairs = list(itertools.combinations(range(n_terms), 2))
    rows = torch.ones(len(pairs), n_terms, dtype=dtype)
    for r, (i, j) in enumerate(pairs):
        rows[r, i], rows[r, j] = big, -big
    subtree = {pair: n_terms - int(v) for pair, v in zip(pairs, rows.sum(-1).tolist())}

    nodes: dict[frozenset, object] = {frozenset([i]): i for i in range(n_terms)}
    while len(nodes) > 1:
        size, a, b = min(
            (max(subtree[min(u, v), max(u, v)] for u in a for v in b), sorted(a), sorted(b))
            for a, b in itertools.combinations(nodes, 2))
        a, b = sorted((frozenset(a), frozenset(b)), key=min)   # the one with the first entry goes first
        if size != len(a) + len(b):
            return None
        nodes[a | b] = (nodes.pop(a), nodes.pop(b))
    return next(iter(nodes.values()))


@functools.lru_cache(maxsize=None)
def _sum_plan(n_terms: int, dtype: torch.dtype, device_type: str):
    """The order in which ``x.sum(-1)`` adds the ``n_terms`` entries of a row here, so that dise's
    sums of stage products round exactly as torchdiffeq's do; None where it is not known (devices
    other than the CPU, whose kernels may choose their tree by the tensor's shape): then ``combine``
    sums a stacked tensor with ``sum(-1)`` itself.

    PyTorch's CPU kernel does not add rows left to right (it keeps several vector accumulators),
    and its tree differs between float32 and float64 and with the row length. It is an
    implementation detail, so it is revealed here, not assumed (``_reveal_plan``), then checked on
    rows whose entries span 16 orders of magnitude, where different orders give different sums.
    """
    if device_type != "cpu":
        return None
    plan = _reveal_plan(n_terms, dtype)
    if plan is None:
        return None
    gen = torch.Generator().manual_seed(n_terms)
    x = torch.randn(4096, n_terms, generator=gen, dtype=torch.float64)
    x = (x * 10 ** (torch.rand(4096, n_terms, generator=gen, dtype=torch.float64) * 16 - 8)).to(dtype)
    if torch.equal(_add(plan, lambda j, out: x[:, j].clone(), []), x.sum(-1)):
        return plan
    return None


def _add(plan, term, scratch: list):
    """Sum ``term(j, out)`` over the indices of ``plan`` in its order. ``term`` writes the j-th
    product into ``out`` (a fresh tensor when ``out`` is None) and returns it, or returns None for
    a term known to be zero (skipped: adding +0 changes no bit but a zero's sign). After the first
    product, products go to one reused buffer (``scratch``), so a sum allocates twice, not S times.
    """
    if isinstance(plan, int):
        return term(plan, None)
    total = None
    for sub in plan:
        if isinstance(sub, int) and total is not None:
            if not scratch:
                scratch.append(torch.empty_like(total))
            value = term(sub, scratch[0])
        else:
            value = _add(sub, term, scratch)
        if value is None:
            continue
        if total is None:
            total = value
        else:
            total += value
    return total


def combine(y: torch.Tensor | None, k: list[torch.Tensor], weights: tuple[float, ...],
            coef: torch.Tensor) -> torch.Tensor:
    """``y + sum_j k[j] * coef[j]`` per row, rounded exactly as torchdiffeq's
    ``y + sum(k * (beta * dt), dim=-1)``: each product rounded, the products added in the order
    ``sum(-1)`` uses (see ``_sum_plan``), then ``y`` added. Product by product into reused buffers,
    without an [N, *state, S] temporary; terms whose tableau weight is zero are skipped. Where the
    order is not known, the products are stacked on a last axis and summed by ``sum(-1)`` itself
    (its order does not depend on how many rows there are).
    ``k``: S tensors ``[N, *state]``; ``weights``: the tableau row; ``coef``: ``[S', N]``, S' >= S.
    """
    shape = (-1, *([1] * (k[0].ndim - 1)))
    plan = _sum_plan(len(k), k[0].dtype, k[0].device.type)
    if plan is None:
        total = torch.stack([k[j] * coef[j].view(shape) for j in range(len(k))], dim=-1).sum(-1)
        return total if y is None else y + total

    reuse = not (torch.is_grad_enabled() and any(kj.requires_grad for kj in k))   # out= has no autograd

    def term(j: int, out: torch.Tensor | None) -> torch.Tensor | None:
        if weights[j] == 0.0:
            return None
        if out is not None and reuse:
            return torch.mul(k[j], coef[j].view(shape), out=out)
        return k[j] * coef[j].view(shape)

    total = _add(plan, term, [])
    if y is None:
        return total
    total += y          # y + total, in place on a buffer we own (IEEE addition commutes)
    return total


def exact_pow(x: torch.Tensor, exponent: "float | torch.Tensor") -> torch.Tensor:
    """``x ** exponent`` per element, computed the way torchdiffeq's 0-dim tensors are.

    On a CPU, PyTorch's vectorised pow differs in the last bit from its scalar pow for a few
    percent of inputs, and which path an element takes depends on its position in the tensor. A
    step size would then depend on a sample's batch-mates. A strided float64 view makes every
    element take the scalar path, in ``x``'s own dtype, as for a 0-dim tensor. Pass the exponent as
    torchdiffeq does: a Python float where it raises to a float (then 0.5 is a square root), a 0-dim
    tensor where it raises to a tensor (then it is ``pow``, even for 0.5).
    """
    buf = torch.empty(len(x), 2, dtype=x.dtype, device=x.device)
    buf[:, 0] = x
    return buf[:, 0].pow(exponent)


def per_row(v: torch.Tensor, ndim: int) -> torch.Tensor:
    """``[N]`` -> ``[N, 1, ..., 1]`` to broadcast a per-row scalar against a state of rank ``ndim``."""
    return v.view(-1, *([1] * (ndim - 1)))


