"""Models whose forward takes several inputs (``forward(noise, labels)``): ``--x-key noise,labels``
names them, they travel packed through profiles and bundles, and every sample gets its own."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

import dise_cli
import dise_cli.errors
import families
from dise_cli.cli import app
from dise_cli.errors import InputError
from dise_cli.inputs import InputJoin, key_names
from dise_cli.profiles import read_profile

TESTS = str(Path(__file__).resolve().parent)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_packing_keeps_every_input_exactly():
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(5, 1, 3, 3, generator=gen), torch.randint(-3, 1000, (5,), generator=gen),
              torch.rand(5, 4, generator=gen) > 0.5, torch.randn(5, 2, generator=gen).to(torch.bfloat16),
              torch.randn(5, 2, dtype=torch.float64, generator=gen)]
    names = ["image", "label", "mask", "half", "double"]
    join, packed = InputJoin.join(inputs, names, "d.pt")
    assert packed.shape == (5, 9 + 1 + 4 + 2 + 2) and packed.dtype == torch.float64
    for original, back in zip(inputs, join.unpack(packed)):
        assert back.dtype == original.dtype and torch.equal(back, original)
    assert InputJoin.from_dict(json.loads(json.dumps(join.to_dict()))) == join
    example = join.unpack(join.example(3, torch.device("cpu")))
    assert [e.shape[1:] for e in example] == [i.shape[1:] for i in inputs] and not example[1].any()


def test_inputs_that_do_not_pack_are_refused_naming_the_key():
    with pytest.raises(InputError, match="'ids'.*2\\*\\*53"):
        InputJoin.join([torch.zeros(2, 1), torch.tensor([2 ** 60 + 1, 0])], ["x", "ids"], "d.pt")
    with pytest.raises(InputError, match="'labels' has shape \\(3,\\), but 'x' has 2 samples"):
        InputJoin.join([torch.zeros(2, 1), torch.zeros(3)], ["x", "labels"], "d.pt")
    with pytest.raises(InputError, match="once"):
        key_names("x,x")
    assert key_names("x") is None and key_names(" noise , labels ") == ("noise", "labels")


def _save(tmp_path, build: str, data: dict) -> list:
    model = getattr(families, build)()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.save(data, tmp_path / "d.pt")
    return [tmp_path / "m.pt", "--arch", f"families:{build}", "--code-path", TESTS, "--data", tmp_path / "d.pt"]


def _through_bundle(tmp_path, common: list, keys: str = "noise,labels") -> dict:
    res = invoke("inspect", *common, "--x-key", keys, "--json", "-")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    for args in (("profile", *common, "--x-key", keys, "--out", tmp_path / "p.sft"),
                 ("train-selector", *common, "--x-key", keys, "--profile", tmp_path / "p.sft", "--epochs", 2,
                  "--out", tmp_path / "s.sft"),
                 ("export", *common[:5], "--selector", tmp_path / "s.sft", "--out", tmp_path / "b.dise"),
                 ("run", tmp_path / "b.dise", "--data", tmp_path / "d.pt", "--x-key", keys, "--code-path", TESTS,
                  "--out", tmp_path / "o.safetensors")):
        res = invoke(*args)
        assert res.exit_code == 0, res.stderr
    return info


def test_a_sampler_of_noise_and_labels_gives_every_sample_its_label(tmp_path):
    """torchcfm's ``lambda t, x: v(x, t, labels)`` in a ``forward(noise, labels)``: the bundle, called as
    the model is, equals the model on each sample alone; other labels give other samples."""
    data = families.make_noise_and_labels(24, seed=1)
    info = _through_bundle(tmp_path, _save(tmp_path, "build_two_input_sampler", data))
    assert info["inputs"] == "noise (N, 2) float32, labels (N) int64" and info["fidelity"]["passed"]
    assert info["per_sample_tensors"] is not None        # f reads the labels: they ride with each sample
    model = families.build_two_input_sampler()
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    noise, labels = data["noise"], data["labels"]
    with torch.no_grad():
        out, stats = bundle(noise, labels, return_stats=True)
        alone = torch.cat([model(noise[i:i + 1], labels[i:i + 1]) for i in range(len(noise))])
        relabelled = bundle(noise, (labels + 1) % 4)
    baseline = stats.integrator == len(stats.candidates) - 1
    torch.testing.assert_close(out[baseline], alone[baseline], rtol=1e-3, atol=1e-3)
    assert float((relabelled - out).abs().max()) > 0.1
    torch.testing.assert_close(load_file(str(tmp_path / "o.safetensors"))["outputs"], out)
    with pytest.raises(TypeError, match="takes 2 inputs \\(noise, labels\\)"):
        bundle(noise)


def test_labels_that_move_only_the_start_export_as_a_program_of_two_inputs(tmp_path):
    data = families.make_noise_and_labels(24, seed=2)
    common = _save(tmp_path, "build_label_shifted_start", data)
    info = _through_bundle(tmp_path, common)
    assert info["per_sample_tensors"] is None and info["export"]["programs"] == "whole"
    bundle = dise_cli.load(tmp_path / "b.dise")                       # programs: no code needed
    assert bundle.manifest["programs"] == "whole"
    model = families.build_label_shifted_start()
    with torch.no_grad():
        out, stats = bundle(data["noise"], data["labels"], return_stats=True)
        own = model(data["noise"], data["labels"])
    baseline = stats.integrator == len(stats.candidates) - 1
    torch.testing.assert_close(out[baseline], own[baseline], rtol=1e-3, atol=1e-3)
    # the bundle's data must hold its inputs: one key is exit 2 naming the data and --x-key
    res = invoke("run", tmp_path / "b.dise", "--data", tmp_path / "d.pt", "--x-key", "noise", "--out", tmp_path / "o2.safetensors")
    assert res.exit_code == 2 and "--x-key" in res.stderr and "2 inputs" in res.stderr
    res = invoke("run", tmp_path / "b.dise", "--data", tmp_path / "d.pt", "--x-key", "labels,noise", "--out",
                 tmp_path / "o2.safetensors")
    assert res.exit_code == 2 and "in the order noise,labels" in res.stderr
    assert not (tmp_path / "o2.safetensors").exists()
    # without --x-key, the bundle's own keys
    res = invoke("run", tmp_path / "b.dise", "--data", tmp_path / "d.pt", "--out", tmp_path / "o3.safetensors")
    assert res.exit_code == 0, res.stderr
    torch.testing.assert_close(load_file(str(tmp_path / "o3.safetensors"))["outputs"], out)


def test_several_inputs_misnamed_or_unnamed_are_one_clear_line(tmp_path):
    common = _save(tmp_path, "build_two_input_sampler", families.make_noise_and_labels(8))
    res = invoke("profile", *common, "--x-key", "noise", "--out", tmp_path / "p.sft")
    assert res.exit_code == 2 and "--x-key noise,labels" in res.stderr.replace("x,labels", "noise,labels")
    res = invoke("profile", *common, "--x-key", "noise,classes", "--out", tmp_path / "p.sft")
    assert res.exit_code == 2 and "no key 'classes' (--x-key)" in res.stderr
    res = invoke("profile", *common, "--x-key", "labels,noise", "--out", tmp_path / "p.sft")
    assert res.exit_code == 2 and "the model rejects data" in res.stderr and "labels (N) int64" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "p.sft").exists()


def test_the_project_file_names_several_inputs_as_a_list(tmp_path):
    """``x_key: [noise, labels]`` in dise.yaml is ``--x-key noise,labels``; the Python API takes the same."""
    import yaml
    common = _save(tmp_path, "build_label_shifted_start", families.make_noise_and_labels(12, seed=4))
    (tmp_path / "dise.yaml").write_text(yaml.safe_dump({
        "model": "m.pt", "arch": "families:build_label_shifted_start", "code_path": [TESTS], "data": "d.pt",
        "x_key": ["noise", "labels"]}))
    res = invoke("inspect", tmp_path / "dise.yaml", "--json", "-")
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["inputs"] == "noise (N, 2) float32, labels (N) int64"
    run = dise_cli.profile(str(common[0]), arch="families:build_label_shifted_start", code_path=[TESTS],
                           data=str(tmp_path / "d.pt"), x_key="noise,labels", out=str(tmp_path / "p.sft"))
    assert run is not None and (tmp_path / "p.sft").exists()


class PairsDataset(torch.utils.data.Dataset):
    """A torch Dataset whose items are ``((noise, label), target)``, or dicts of named inputs."""

    def __init__(self, as_dicts: bool = False):
        self.data, self.as_dicts = families.make_noise_and_labels(6, seed=5), as_dicts

    def __len__(self):
        return 6

    def __getitem__(self, i):
        if self.as_dicts:
            return {"noise": self.data["noise"][i], "labels": self.data["labels"][i]}
        return (self.data["noise"][i], self.data["labels"][i]), self.data["noise"][i] * 0


def pairs():
    return PairsDataset()


def named_items():
    return PairsDataset(as_dicts=True)


def test_a_dataset_of_input_pairs_or_named_items_gives_several_inputs():
    from dise_cli.datasets import DataSpec, load_data
    data = load_data(DataSpec(factory="test_inputs:pairs", code_path=(TESTS,)))
    assert data.join.names == ("x0", "x1") and data.y.shape == (6, 2)
    noise, labels = data.join.unpack(data.x)
    assert torch.equal(noise, families.make_noise_and_labels(6, seed=5)["noise"]) and labels.dtype == torch.int64
    data = load_data(DataSpec(factory="test_inputs:named_items", x_key="noise,labels", code_path=(TESTS,)))
    assert data.join.names == ("noise", "labels") and data.y is None


def test_a_pickle_the_factory_does_not_rebuild_is_not_exported(tmp_path):
    """A pickled sampler whose guidance was set after it was built: the bundle would rebuild it with the
    factory's guidance. Export compares the two and refuses (it used to write a bundle of another model)."""
    model = families.build_two_input_sampler()
    model.guidance = 2.0
    torch.save(model, tmp_path / "whole.pt")
    torch.save(families.make_noise_and_labels(16, seed=6), tmp_path / "d.pt")
    common = [tmp_path / "whole.pt", "--trust-pickle", "--arch", "families:build_two_input_sampler",
              "--code-path", TESTS]
    for args in (("profile", *common, "--data", tmp_path / "d.pt", "--x-key", "noise,labels", "--out", tmp_path / "p.sft"),
                 ("train-selector", *common, "--data", tmp_path / "d.pt", "--x-key", "noise,labels", "--profile",
                  tmp_path / "p.sft", "--epochs", 1, "--out", tmp_path / "s.sft")):
        res = invoke(*args)
        assert res.exit_code == 0, res.stderr
    res = invoke("export", *common, "--selector", tmp_path / "s.sft", "--out", tmp_path / "b.dise")
    assert res.exit_code == 2 and "is not the model read" in res.stderr and not (tmp_path / "b.dise").exists()


def test_a_key_named_t_is_an_input_where_named_and_left_out_where_unused(tmp_path):
    """A time grid per sample in the data is for a bare vector field: beside a model that passes its own
    grid it is left out, with a note (it was exit 2); named in --x-key, ``t`` is an input like any other."""
    data = families.make_noise_and_labels(12, seed=7)
    data["t"] = torch.linspace(0, 1, 3).repeat(12, 1) * torch.rand(12, 1, generator=torch.Generator().manual_seed(0))
    common = _save(tmp_path, "build_label_shifted_start", data)
    res = invoke("profile", *common, "--x-key", "noise,labels", "--out", tmp_path / "p.sft")
    assert res.exit_code == 0, res.stderr
    assert "'t' (a time grid per sample) is left out" in res.stderr
    from dise_cli.datasets import DataSpec, load_data
    loaded = load_data(DataSpec(path=tmp_path / "d.pt", x_key="noise,labels,t"))
    assert loaded.t is None and loaded.join.names == ("noise", "labels", "t")


def test_python_callers_pass_tensors_as_data(tmp_path):
    """``dise_cli.profile(model, data={...})``: tensors from Python, read as a file's keys would be."""
    data = families.make_noise_and_labels(12, seed=8)
    common = _save(tmp_path, "build_label_shifted_start", data)
    run = dise_cli.profile(str(common[0]), arch="families:build_label_shifted_start", code_path=[TESTS], data=data,
                           x_key=["noise", "labels"])
    assert run.profile.n_samples == 12
    with pytest.raises(dise_cli.errors.UsageError, match="data: Python callers pass a int"):
        dise_cli.profile(str(common[0]), arch="families:build_label_shifted_start", code_path=[TESTS], data=3)


@pytest.mark.parametrize("build", ["build_sit_style_sampler_f64", "build_doubled_labels_sampler_f64"])
def test_guidance_by_batch_doubling(tmp_path, build):
    """Classifier-free guidance as DiT and SiT sample: the state ``cat([z, z])`` (2N rows for N inputs)
    and labels ``cat([y, y_null])`` that f reads; or the labels alone doubled. Both were exit 2
    ("a state of shape (6, 2) for 3 inputs", "fails on one sample of its batch"). A sample's rows are
    its state and its labels, so each sample solved alone is the model run on that sample alone, bit
    for bit in float64, with its NFE; and the whole pipeline runs."""
    from dise_cli.fidelity import check_fidelity
    from dise_cli.integrators import Dopri5
    from dise_cli.reading import read_model
    model = getattr(families, build)()
    data = families.make_noise_and_labels(24)
    data["noise"] = data["noise"].double()
    join, x = InputJoin.join([data["noise"], data["labels"]], ["noise", "labels"], "d.pt")
    ode = read_model(model, x, join=join)
    for i in range(3):
        with torch.no_grad():
            check = check_fidelity(ode, x[i:i + 1], Dopri5(rtol=1e-6, atol=1e-6))
        assert check.passed and check.difference == 0.0
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.save(data, tmp_path / "d.pt")
    common = ["--data", str(tmp_path / "d.pt"), "--x-key", "noise,labels", "--code-path", TESTS]
    arch = ["--arch", f"families:{build}"]
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "m.pt"), *arch, *common, "--out", str(tmp_path / "p.st"),
                                   "--json", "-"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["task"] == "regression"          # samples, not class scores
    nfe = read_profile(tmp_path / "p.st").nfe[:, 2]
    calls = [0]
    model.net.v.inp.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    for i in range(4):
        calls[0] = 0
        with torch.no_grad():
            model(data["noise"][i:i + 1], data["labels"][i:i + 1])
        assert nfe[i].item() == calls[0]


def test_latent_guidance_by_batch_doubling_with_list_tolerances_exports(tmp_path):
    """SiT on 4-channel latents with ``atol=[atol]``: the tolerance lists were spread over 2N samples'
    worth of elements (exit 2), and a batch of 4 rows beside 4 channels took the channels for the
    samples at export (exit 2). Both read as SiT samples: 2 rows a sample, its tolerances per element."""
    model = families.build_latent_sit_sampler()
    gen = torch.Generator().manual_seed(0)
    data = {"noise": torch.randn(24, 4, 2, 2, generator=gen), "labels": torch.randint(0, 4, (24,), generator=gen)}
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.save(data, tmp_path / "d.pt")
    common = ["--data", str(tmp_path / "d.pt"), "--x-key", "noise,labels", "--code-path", TESTS]
    arch = ["--arch", "families:build_latent_sit_sampler"]
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "m.pt"), *arch, *common, "--json", "-"])
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["state"].startswith("(2xN, 4, 2, 2)") and info["baseline_exact"]
    assert info["baseline"] == "dopri5:rtol=0.001x32,atol=1e-06x32"
    res = CliRunner().invoke(app, ["profile", str(tmp_path / "m.pt"), *arch, *common, "--out", str(tmp_path / "p.st")])
    assert res.exit_code == 0, res.stderr
    res = CliRunner().invoke(app, ["train-selector", str(tmp_path / "m.pt"), *arch, *common, "--profile",
                                   str(tmp_path / "p.st"), "--epochs", "2", "--out", str(tmp_path / "s.st")])
    assert res.exit_code == 0, res.stderr
    res = CliRunner().invoke(app, ["export", str(tmp_path / "m.pt"), *arch, "--code-path", TESTS, "--selector",
                                   str(tmp_path / "s.st"), "--out", str(tmp_path / "b.dise")])
    assert res.exit_code == 0, res.stderr
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=(TESTS,))
    out, stats = bundle(data["noise"][:4], data["labels"][:4], return_stats=True)
    with torch.no_grad():
        for i in torch.nonzero(stats.integrator == 2).flatten().tolist():       # routed to the model's own
            alone = model(data["noise"][i:i + 1], data["labels"][i:i + 1])
            # float32 rounds a row in a batch otherwise than alone: within the solve's tolerance (rtol 1e-3)
            torch.testing.assert_close(out[i:i + 1], alone, rtol=0, atol=2e-3)
