"""The selector v(h(0)): small networks that predict one cost per candidate, and their file.

Architectures follow the shape of the input (paper section 4): for ``[C, H, W]`` the residual conv net
of Table 2 (two residual blocks, GroupNorm, ReLU, global average pooling, FC to 32, FC to K) at a
configurable width after a 1x1 projection (so that v stays cheap next to f); for vectors the MLP of
Table 7 (FC to 32, then tanh FCs 64, 32, K). The input is h(0), as in the paper, or the decoded
one-step Euler answer (``routing.selector_inputs``). Inputs are standardised with the training split's
statistics, kept as buffers. The file is safetensors: weights plus one JSON header entry
(architecture, candidates, calibration offsets, cost settings, and the hashes of the model, data
and profile it was trained from), with ``made_with`` (``dise_cli.provenance``: versions and device)
beside them, a record that no check compares. No pickle.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from dise_cli import __version__
from dise_cli.errors import InputError, UsageError, first_line
from dise_cli.files import atomic_path, read_safetensors
from dise_cli.provenance import PROVENANCE_KEY, made_with, read_made_with

SELECTOR_FORMAT = "dise-selector"
SELECTOR_FORMAT_VERSION = 1
HEADER_KEY = "dise_selector"
ARCHS = ("auto", "conv", "mlp", "table4")
TABLE4_WIDTHS = [10, 10, 5, 5]      # the paper's Table 4 (PhysioNet): ReLU FC 20-10-10-5-5, dropout at the 4th, FC -> K


@dataclass
class SelectorSpec:
    """Everything that rebuilds the network (the weights aside)."""

    kind: str                       # conv | mlp | table4
    in_shape: list[int]             # the selector's input per sample
    n_candidates: int
    inputs: str = "h0"              # h0 | euler (see routing.selector_inputs)
    width: int = 16                 # conv: channels of the residual blocks
    hidden: list[int] = field(default_factory=lambda: [32, 64, 32])   # mlp
    dropout: float = 0.0            # table4: dropout after the 4th layer's ReLU (the paper: 0 or 0.25)

    @classmethod
    def for_shape(cls, in_shape: tuple[int, ...], n_candidates: int, arch: str = "auto",
                  inputs: str = "h0", dropout: float = 0.0) -> "SelectorSpec":
        if arch not in ARCHS:
            raise UsageError(f"--selector-arch: unknown selector architecture '{arch}'; valid: {', '.join(ARCHS)}")
        if not 0 <= dropout < 1:
            raise UsageError(f"--dropout: must be in [0, 1), got {dropout}")
        kind = arch if arch != "auto" else ("conv" if len(in_shape) == 3 else "mlp")
        if kind == "conv" and len(in_shape) != 3:
            raise UsageError(f"--selector-arch conv: the selector's input has shape {tuple(in_shape)}, not [C, H, W]; "
                             f"use --selector-arch mlp")
        if dropout and kind != "table4":
            raise UsageError(f"--dropout: only the table4 selector has a dropout layer (this one is {kind})")
        return cls(kind=kind, in_shape=list(in_shape), n_candidates=n_candidates, inputs=inputs,
                   hidden=list(TABLE4_WIDTHS) if kind == "table4" else [32, 64, 32], dropout=float(dropout))


class _ResidualBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.norm1 = nn.GroupNorm(min(8, width), width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = nn.GroupNorm(min(8, width), width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.norm1(self.conv1(x)))
        return x + self.norm2(self.conv2(out))


def _table4(spec: SelectorSpec) -> nn.Sequential:
    """The paper's Table 4: σ(FC) x3, ψ(σ(FC)), FC, with σ = ReLU and ψ = dropout."""
    d = 1
    for s in spec.in_shape:
        d *= s
    w1, w2, w3, w4 = spec.hidden
    return nn.Sequential(nn.Flatten(), nn.Linear(d, w1), nn.ReLU(), nn.Linear(w1, w2), nn.ReLU(),
                         nn.Linear(w2, w3), nn.ReLU(), nn.Linear(w3, w4), nn.ReLU(), nn.Dropout(spec.dropout),
                         nn.Linear(w4, spec.n_candidates))


class SelectorNet(nn.Module):
    """v(h0) -> ``[N, K]`` predicted costs."""

    def __init__(self, spec: SelectorSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("mean", torch.zeros(spec.in_shape))
        self.register_buffer("std", torch.ones(spec.in_shape))
        k = spec.n_candidates
        if spec.kind == "conv":
            c, w = spec.in_shape[0], spec.width
            self.body = nn.Sequential(
                nn.Conv2d(c, w, 1), _ResidualBlock(w), nn.ReLU(), _ResidualBlock(w),
                nn.GroupNorm(min(8, w), w), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(w, 32), nn.ReLU(), nn.Linear(32, k))
        elif spec.kind == "table4":
            self.body = _table4(spec)
        else:
            d = 1
            for s in spec.in_shape:
                d *= s
            sizes = [d, *spec.hidden]
            layers: list[nn.Module] = [nn.Flatten()]
            for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
                layers += [nn.Linear(a, b)] + ([nn.Tanh()] if i > 0 or len(sizes) == 2 else [])
            layers.append(nn.Linear(sizes[-1], k))
            self.body = nn.Sequential(*layers)

    def forward(self, h0: torch.Tensor) -> torch.Tensor:
        return self.body((h0.to(self.mean.dtype) - self.mean) / self.std)

    def set_normalisation(self, h0: torch.Tensor) -> None:
        """Standardise inputs with per-feature statistics of ``h0`` (the training split)."""
        self.mean.copy_(h0.mean(0))
        self.std.copy_(h0.std(0).clamp(min=1e-6) if len(h0) > 1 else torch.ones_like(self.std))


@dataclass
class Selector:
    """A trained selector: the network, the candidate specs in profile order, and the per-candidate
    offsets chosen by calibration (added to the predicted costs before the argmin)."""

    net: SelectorNet
    candidates: list[str]
    offsets: list[float]
    meta: dict = field(default_factory=dict)     # cost settings, hashes, metrics
    # versions and device it was trained with (provenance.made_with; pass made_with(device) where it is
    # known); None for a file written before dise recorded them. Written as read, never refreshed.
    made_with: dict[str, str] | None = field(default_factory=made_with)

    @torch.no_grad()
    def choose(self, h0: torch.Tensor) -> torch.Tensor:
        """The chosen candidate index per sample, ``[N]``."""
        costs = self.net(h0) + torch.tensor(self.offsets, dtype=self.net.mean.dtype, device=h0.device)
        return costs.argmin(1)


def selector_bytes(selector: Selector) -> bytes:
    """The selector file's content: weights plus the JSON header, as safetensors bytes."""
    from safetensors.torch import save
    header = {"format": SELECTOR_FORMAT, "format_version": SELECTOR_FORMAT_VERSION, "dise_version": __version__,
              "spec": asdict(selector.net.spec), "candidates": selector.candidates, "offsets": selector.offsets,
              "meta": selector.meta}
    if selector.made_with is not None:
        header[PROVENANCE_KEY] = selector.made_with
    state = {k: v.detach().cpu().contiguous() for k, v in selector.net.state_dict().items()}
    return save(state, metadata={HEADER_KEY: json.dumps(header, sort_keys=True)})


def write_selector(selector: Selector, path: str | Path) -> None:
    """Write atomically: a temporary file in the same folder, renamed when complete."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(selector_bytes(selector))


def read_selector(path: str | Path) -> Selector:
    metadata, state = read_safetensors(path, "selector")
    return selector_from(state, metadata.get(HEADER_KEY), str(path))


def selector_from(state: dict[str, torch.Tensor], header_text: str | None, name: str) -> Selector:
    """Rebuild a selector from its weights and header text (a selector file or a bundle member)."""
    try:
        header = json.loads(header_text or "")
    except json.JSONDecodeError:
        header = None
    if not isinstance(header, dict) or header.get("format") != SELECTOR_FORMAT:
        raise InputError(f"selector '{name}' is not a dise selector (no '{HEADER_KEY}' header)")
    version = header.get("format_version")
    if not isinstance(version, int) or version > SELECTOR_FORMAT_VERSION:
        raise InputError(f"selector '{name}' has format version {version}; this dise reads up to "
                         f"{SELECTOR_FORMAT_VERSION}: upgrade dise")
    try:
        net = SelectorNet(SelectorSpec(**header["spec"]))
        net.load_state_dict(state, strict=True)
        candidates = [str(c) for c in header["candidates"]]
        offsets = [float(v) for v in header["offsets"]]
        if len(candidates) != net.spec.n_candidates or len(offsets) != len(candidates):
            raise ValueError("candidates, offsets and the network's outputs disagree in number")
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise InputError(f"selector '{name}' is damaged ({first_line(exc)})") from None
    net.eval()
    return Selector(net=net, candidates=candidates, offsets=offsets, meta=dict(header.get("meta", {})),
                    made_with=read_made_with(header.get(PROVENANCE_KEY)))
