"""Model files: state dicts with --arch, safetensors, pickles only with --trust-pickle."""
from __future__ import annotations

import pickle
import textwrap
from pathlib import Path

import pytest
import torch

import tiny_models
from dise_cli.errors import InputError, UsageError
from dise_cli.loading import ModelSpec, load_model

TESTS = str(Path(__file__).resolve().parent)
ARCH = "tiny_models:build_classifier"


def spec(path, **kw) -> ModelSpec:
    kw.setdefault("code_path", (TESTS,))
    return ModelSpec(path=Path(path), **kw)


@pytest.mark.parametrize("name", ["model.pt", "model.safetensors"])
def test_state_dict_with_arch(tiny, name):
    loaded = load_model(spec(tiny["dir"] / name, arch=ARCH))
    x = tiny["x"][:5]
    torch.testing.assert_close(loaded.module(x), tiny["module"](x))
    assert loaded.format in ("state_dict", "safetensors") and len(loaded.sha256) == 64
    assert not loaded.module.training


def test_checkpoint_dict_with_nested_state(tiny, tmp_path):
    torch.save({"epoch": 3, "state_dict": tiny["module"].state_dict()}, tmp_path / "ckpt.pth")
    assert load_model(spec(tmp_path / "ckpt.pth", arch=ARCH)).format == "state_dict"


def test_checkpoint_with_the_scripts_arguments(tiny, tmp_path):
    """torchdiffeq's ODE-Net example saves {'state_dict': ..., 'args': args}: an argparse.Namespace
    builds no code, so it loads with weights_only; any other object still needs --trust-pickle."""
    import argparse
    args = argparse.Namespace(tol=1e-3, adjoint=False, network="odenet", save="./experiment1")
    torch.save({"state_dict": tiny["module"].state_dict(), "args": args}, tmp_path / "ckpt.pth")
    loaded = load_model(spec(tmp_path / "ckpt.pth", arch=ARCH))
    assert loaded.format == "state_dict"
    torch.testing.assert_close(loaded.module(tiny["x"]), tiny["module"](tiny["x"]))
    _Evil.marker = tmp_path / "pwned"
    torch.save({"state_dict": tiny["module"].state_dict(), "args": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(spec(tmp_path / "evil.pth", arch=ARCH))
    assert not _Evil.marker.exists()


def _perturbed(module, by: float):
    return {k: v + by for k, v in module.state_dict().items()}


@pytest.mark.parametrize("layout", [
    {"model": "net", "model_ema": "ema", "optimizer": None, "epoch": 3},          # torchvision, k-diffusion
    {"net_model": "net", "ema_model": "ema", "sched": None, "step": 10},         # torchcfm's CIFAR-10 script
    {"model_state_dict": "net", "ema_state_dict": "ema"},
])
def test_a_checkpoint_with_the_weights_and_their_ema_is_never_read_silently(tiny, tmp_path, layout):
    """Several state dicts: exit 2 naming them and --state-key; --state-key picks one, and says so."""
    weights = {"net": _perturbed(tiny["module"], 0.01), "ema": _perturbed(tiny["module"], -0.02)}
    ckpt = {k: (weights[v] if v in weights else ({"state": {}, "param_groups": []} if v is None else v))
            for k, v in layout.items()}
    torch.save(ckpt, tmp_path / "ckpt.pth")
    with pytest.raises(InputError, match="several state dicts .*--state-key"):
        load_model(spec(tmp_path / "ckpt.pth", arch=ARCH))
    ema_key = next(k for k, v in layout.items() if v == "ema")
    loaded = load_model(spec(tmp_path / "ckpt.pth", arch=ARCH, state_key=ema_key))
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in weights["ema"].items())
    assert f"'{ema_key}'" in loaded.note
    with pytest.raises(UsageError, match="--state-key nope: .* holds no state dict under 'nope'"):
        load_model(spec(tmp_path / "ckpt.pth", arch=ARCH, state_key="nope"))


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model."])
def test_a_training_wrappers_key_prefix_is_taken_off(tiny, tmp_path, prefix):
    """DataParallel's 'module.', torch.compile's '_orig_mod.', a LightningModule's 'model.' (in a .ckpt,
    under 'state_dict' beside Lightning's other entries): taken off where that gives exactly the model's keys."""
    state = {prefix + k: v for k, v in tiny["module"].state_dict().items()}
    torch.save({"state_dict": state, "epoch": 1, "global_step": 10, "pytorch-lightning_version": "2.4.0"},
               tmp_path / "last.ckpt")
    loaded = load_model(spec(tmp_path / "last.ckpt", arch=ARCH))
    torch.testing.assert_close(loaded.module(tiny["x"]), tiny["module"](tiny["x"]))
    assert f"prefix '{prefix}'" in loaded.note


def test_a_factory_that_takes_the_checkpoint_gets_it(tiny, tmp_path):
    """build(checkpoint) is handed the file's dict, even where dise would find one state dict in it itself."""
    torch.save({"model": _perturbed(tiny["module"], 0.5), "ema": _perturbed(tiny["module"], 0.25)},
               tmp_path / "ckpt.pth")
    loaded = load_model(spec(tmp_path / "ckpt.pth", arch="tiny_models:build_classifier_from_ema_checkpoint"))
    assert loaded.format == "checkpoint"
    want = _perturbed(tiny["module"], 0.25)
    assert all(torch.equal(loaded.module.state_dict()[k], v) for k, v in want.items())


def test_state_dict_without_arch(tiny):
    with pytest.raises(UsageError, match="--arch"):
        load_model(spec(tiny["model"]))


def test_pickled_module_needs_trust(tiny, tmp_path):
    torch.save(tiny["module"], tmp_path / "whole.pt")
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(spec(tmp_path / "whole.pt"))
    loaded = load_model(spec(tmp_path / "whole.pt", trust_pickle=True))
    assert loaded.format == "pickle"
    torch.testing.assert_close(loaded.module(tiny["x"]), tiny["module"](tiny["x"]))


class _Evil:
    def __reduce__(self):
        import os
        return (os.system, (f"touch {_Evil.marker}",))


def test_malicious_pickle_is_not_executed(tmp_path):
    _Evil.marker = tmp_path / "pwned"
    with open(tmp_path / "evil.pt", "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(InputError, match="--trust-pickle"):
        load_model(spec(tmp_path / "evil.pt", arch=ARCH))
    assert not _Evil.marker.exists()


def test_pickle_class_found_through_code_path(tmp_path, monkeypatch):
    pkg = tmp_path / "usercode"
    pkg.mkdir()
    (pkg / "mynets.py").write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(2, 2)
    """))
    monkeypatch.syspath_prepend(str(pkg))
    import mynets
    torch.save(mynets.Net(), tmp_path / "net.pt")
    monkeypatch.syspath_prepend(str(tmp_path))  # cleanup marker only
    import sys
    sys.path.remove(str(pkg))
    del sys.modules["mynets"]
    with pytest.raises(InputError, match="needs module 'mynets'"):
        load_model(ModelSpec(path=tmp_path / "net.pt", trust_pickle=True))
    loaded = load_model(ModelSpec(path=tmp_path / "net.pt", trust_pickle=True, code_path=(str(pkg),)))
    assert type(loaded.module).__name__ == "Net"
    sys.modules.pop("mynets", None)


@pytest.mark.parametrize("arch,needle", [
    ("no_such_module:build", "cannot import module 'no_such_module'"),
    ("tiny_models:nope", "has no attribute 'nope'"),
    ("tiny_models", "must look like package.module:name"),
    ("tiny_models:build_not_a_module", "not an nn.Module"),
    ("tiny_models:ODEBlock", "failed"),
])
def test_bad_arch(tiny, arch, needle):
    with pytest.raises(UsageError, match="--arch") as err:
        load_model(spec(tiny["model"], arch=arch))
    assert needle in str(err.value)


def test_state_dict_that_does_not_fit(tiny, tmp_path):
    state = dict(tiny["module"].state_dict())
    state.pop("0.weight")
    state["extra"] = torch.zeros(1)
    state["2.bias"] = torch.zeros(7)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(InputError) as err:
        load_model(spec(tmp_path / "bad.pt", arch=ARCH))
    msg = str(err.value)
    assert "missing keys: 0.weight" in msg and "unexpected keys: extra" in msg and "2.bias (7,) vs (3,)" in msg


@pytest.mark.parametrize("content,name,needle", [
    (None, "missing.pt", "does not exist"),
    (b"", "empty.pt", "is empty"),
    (b"\x00garbage" * 10, "junk.pt", "not a readable PyTorch file"),
    (b"\x00garbage" * 10, "junk.safetensors", "not a readable safetensors file"),
    (b"x", "model.onnx", "unknown format '.onnx'"),
])
def test_unreadable_model_files(tmp_path, content, name, needle):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=needle):
        load_model(spec(path, arch=ARCH))


def test_truncated_files(tiny, tmp_path):
    for name in ("model.pt", "model.safetensors"):
        data = (tiny["dir"] / name).read_bytes()
        (tmp_path / name).write_bytes(data[: len(data) // 2])
        with pytest.raises(InputError, match="not a readable"):
            load_model(spec(tmp_path / name, arch=ARCH))


def test_directory_as_model(tmp_path):
    with pytest.raises(InputError, match="is a directory"):
        load_model(spec(tmp_path, arch=ARCH))


def test_tiny_models_importable():
    assert tiny_models.build_classifier() is not None


@pytest.mark.parametrize("numpy_data", [False, True])
def test_checkpoint_with_several_state_dicts(tmp_path, numpy_data):
    """torchdiffeq's latent ODE example saves func/rec/dec state dicts, optimizer state and its data
    (numpy arrays): one clear line without a factory that takes it; the model with one."""
    import families
    families.save_latent_ode_checkpoint(tmp_path / "ckpt.pth", numpy_data=numpy_data)
    with pytest.raises(InputError) as err:
        load_model(spec(tmp_path / "ckpt.pth", arch="families:build_latent_ode"))
    message = str(err.value)
    assert "several state dicts (func_state_dict, rec_state_dict, dec_state_dict)" in message
    assert "optimizer_state_dict" in message and "build(checkpoint)" in message
    loaded = load_model(spec(tmp_path / "ckpt.pth", arch="families:build_latent_ode_from_checkpoint"))
    x, _ = families.make_latent_ode_data(8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), families.build_latent_ode()(x))
    assert loaded.format == "checkpoint"


def test_class_pickled_from_main_says_so(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent("""
        import torch
        class Net(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = torch.nn.Linear(2, 2)
        torch.save(Net(), "net.pt")
    """))
    import subprocess
    import sys
    subprocess.run([sys.executable, str(script)], cwd=tmp_path, check=True)
    for trust in (False, True):
        with pytest.raises(InputError, match="__main__.*define the class in a module") as err:
            load_model(spec(tmp_path / "net.pt", trust_pickle=trust))
        assert "--arch mymodel:build" in str(err.value)


def test_pickled_module_with_arch_for_export(tiny, tmp_path):
    torch.save(tiny["module"], tmp_path / "whole.pt")
    loaded = load_model(spec(tmp_path / "whole.pt", trust_pickle=True, arch=ARCH))
    assert loaded.format == "pickle" and loaded.spec.arch == ARCH
    with pytest.raises(InputError, match="does not fit --arch"):
        load_model(spec(tmp_path / "whole.pt", trust_pickle=True, arch="tiny_models:build_wrapper"))
