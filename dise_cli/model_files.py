"""Writing a model back in the form it was read: safetensors, or a .pt/.pth state dict; a pickled
module only as a state dict (it needs --arch to load again). Atomic, so nothing is half-written."""
from __future__ import annotations

from pathlib import Path

import torch

from dise_cli.files import atomic_path
from dise_cli.loading import ModelSpec


def output_for(spec: ModelSpec, out: str | None) -> tuple[Path, str | None]:
    """The output path (default: beside the input, with a ``.finetuned`` infix) and a note to show."""
    path = Path(out) if out else spec.path.with_name(f"{spec.path.stem}.finetuned{spec.path.suffix}")
    note = None
    if spec.trust_pickle and not spec.arch:
        note = (f"the model was a pickled module; '{path}' is a state dict: load it with --arch "
                f"package.module:factory")
    return path, note


def layout_note(loaded, path: Path) -> str | None:
    """What a person must know where the written state dict is not laid out as the file read was: a
    checkpoint of several entries (a state dict under a key, or ``build(checkpoint)``'s own layout)."""
    if loaded.format != "checkpoint" and not loaded.note:
        return None
    return (f"'{path}' holds the fine-tuned model's state dict alone (model.state_dict()), not the layout of "
            f"'{loaded.spec.path}' (its other entries and keys are not copied); load it with "
            f"model.load_state_dict(...), or give it to dise as it is")


def storable(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: detached, on the CPU, contiguous, and no two entries sharing
    memory (a module registered twice, or tied weights, gives one tensor two keys; safetensors refuses
    that, so the later keys get copies, and loading fills every key as before)."""
    out, seen = {}, set()
    for key, value in state.items():
        tensor = value.detach().cpu().contiguous()
        if tensor.numel():
            storage = (tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes())
            if storage in seen:
                tensor = tensor.clone()
            seen.add((tensor.untyped_storage().data_ptr(), tensor.untyped_storage().nbytes()))
        out[key] = tensor
    return out


def save_model(opened, state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors for a ``.safetensors`` path, else a ``torch.save`` state dict (``weights_only`` loads it)."""
    state = storable(state)
    with atomic_path(path) as tmp:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import save_file
            save_file(state, str(tmp))
        else:
            torch.save(state, tmp)
