"""A model whose forward takes several inputs (a conditional sampler's ``forward(noise, labels)``, a
series and its mask): the data keys named by ``--x-key noise,labels`` travel through dise as one
tensor, each sample's values side by side in float64, and are taken apart into the forward's
arguments, in their own shapes and dtypes, where dise calls the model. Packing is checked exact
(float64, float32, float16 and bfloat16 values, integers below 2**53 and booleans all are); batches,
shards, selectors and bundles then handle one tensor as for any model."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from dise_cli.errors import InputError

PACKED = torch.float64


def key_names(x_key: str | None) -> tuple[str, ...] | None:
    """The data keys of the model's inputs: ``"noise,labels"`` gives several; None where one key, or
    none, is named."""
    if x_key is None or "," not in x_key:
        return None
    names = tuple(k.strip() for k in x_key.split(","))
    if len(names) < 2:
        return None
    if any(not k for k in names) or len(set(names)) != len(names):
        raise InputError(f"--x-key '{','.join(names)}': name each input's key once, separated by commas")
    return names


@dataclass(frozen=True)
class InputJoin:
    """The model's inputs, in the order its forward takes them: their data keys, and each sample's
    shape and dtype."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def widths(self) -> list[int]:
        return [math.prod(s) for s in self.shapes]

    @classmethod
    def join(cls, tensors: Sequence[torch.Tensor], names: Sequence[str], data_name: str) -> tuple["InputJoin", torch.Tensor]:
        """The join of ``tensors`` (one per key of ``names``) and the packed inputs ``[N, D]``."""
        first = tensors[0]
        for name, t in zip(names, tensors):
            if t.ndim < 1 or len(t) != len(first):
                raise InputError(f"data '{data_name}': '{name}' has shape {tuple(t.shape)}, but '{names[0]}' has "
                                 f"{len(first)} samples; every input needs one row per sample")
            if t.is_complex():
                raise InputError(f"data '{data_name}': '{name}' has dtype {t.dtype}; expected a real number type")
        joined = cls(names=tuple(names), shapes=tuple(tuple(t.shape[1:]) for t in tensors),
                     dtypes=tuple(str(t.dtype).replace("torch.", "") for t in tensors))
        packed = joined.pack(tensors)
        for name, original, back in zip(names, tensors, joined.unpack(packed)):
            if not torch.equal(original, back):
                raise InputError(f"data '{data_name}': '{name}' ({original.dtype}) holds values float64 does not "
                                 f"hold exactly (integers beyond 2**53); dise carries several inputs as float64")
        return joined, packed

    def pack(self, inputs: Sequence[torch.Tensor]) -> torch.Tensor:
        """``[N, D]`` float64: each sample's inputs flattened side by side."""
        if len(inputs) != len(self.names):
            raise TypeError(f"the model takes {len(self.names)} inputs ({', '.join(self.names)}), got {len(inputs)}")
        n = len(inputs[0])
        for name, shape, t in zip(self.names, self.shapes, inputs):
            if tuple(t.shape[1:]) != shape or len(t) != n:
                raise ValueError(f"input '{name}' has shape {tuple(t.shape)}; expected ({n}, "
                                 f"{', '.join(map(str, shape))})")
        return torch.cat([t.detach().reshape(n, -1).to(PACKED) for t in inputs], dim=1)

    def unpack(self, packed: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The model's arguments from packed rows."""
        out, start = [], 0
        for shape, dtype, width in zip(self.shapes, self.dtypes, self.widths):
            column = packed[:, start:start + width].reshape(packed.shape[0], *shape)
            want = getattr(torch, dtype)
            if want == torch.bool:
                column = column != 0
            elif not want.is_floating_point:
                column = column.round()
            out.append(column.to(want))
            start += width
        return tuple(out)

    def example(self, n: int, device: torch.device) -> torch.Tensor:
        """Packed inputs for tracing a model: seeded normal noise for float inputs, zeros for the rest."""
        gen = torch.Generator().manual_seed(0)
        parts = [torch.randn(n, *shape, generator=gen) if getattr(torch, dtype).is_floating_point
                 else torch.zeros(n, *shape) for shape, dtype in zip(self.shapes, self.dtypes)]
        return self.pack([p.to(getattr(torch, d)) for p, d in zip(parts, self.dtypes)]).to(device)

    def describe(self, packed: torch.Tensor | None = None) -> str:
        n = "N" if packed is None else str(len(packed))
        return ", ".join(f"{name} ({', '.join([n, *map(str, s)])}) {d}"
                         for name, s, d in zip(self.names, self.shapes, self.dtypes))

    def to_dict(self) -> dict:
        return {"names": list(self.names), "shapes": [list(s) for s in self.shapes], "dtypes": list(self.dtypes)}

    @classmethod
    def from_dict(cls, record: Any) -> "InputJoin | None":
        if not record:
            return None
        return cls(names=tuple(record["names"]), shapes=tuple(tuple(s) for s in record["shapes"]),
                   dtypes=tuple(record["dtypes"]))
