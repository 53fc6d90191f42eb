"""The selection pipeline end to end on tiny models: profile -> train-selector -> export -> evaluate
-> run, the bundle's integrity checks, and the routed model's behaviour."""
from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file
from typer.testing import CliRunner

import dise_cli
import tiny_models
from dise_cli.cli import app
from dise_cli.routing import RoutedModel

TESTS = str(Path(__file__).resolve().parent)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture
def pipeline(tiny) -> dict:
    """The tiny classifier profiled, a selector trained and a bundle exported (in a temp folder)."""
    d = tiny["dir"]
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(200, 2, generator=gen) * 2
    with torch.no_grad():
        y = tiny["module"](x).argmax(1)
    save_file({"x": x, "y": y}, str(d / "train.safetensors"))
    args = [*tiny["arch"]]
    res = invoke("profile", tiny["model"], "--data", d / "train.safetensors", *args, "--out", d / "p.safetensors")
    assert res.exit_code == 0, res.stderr
    res = invoke("train-selector", tiny["model"], "--data", d / "train.safetensors", "--profile", d / "p.safetensors",
                 "--arch", "tiny_models:build_classifier", "--code-path", TESTS, "--epochs", 5,
                 "--out", d / "sel.safetensors", "--json", d / "train.json")
    assert res.exit_code == 0, res.stderr
    res = invoke("export", tiny["model"], *args, "--selector", d / "sel.safetensors", "--out", d / "m.dise")
    assert res.exit_code == 0, res.stderr
    return {**tiny, "train": d / "train.safetensors", "profile": d / "p.safetensors", "selector": d / "sel.safetensors",
            "bundle": d / "m.dise"}


def test_train_selector_report(pipeline):
    report = json.loads((pipeline["dir"] / "train.json").read_text())
    assert set(report) == {"schema_version", "task", "selector", "n_train", "n_validation", "costs", "selector_nfe",
                           "final_train_loss",
                           "max_accuracy_drop_pp", "dise", "uncalibrated", "baseline_only", "best_single", "oracle",
                           "tradeoff", "made_with", "budgets"}
    assert set(report["dise"]) == {"accuracy", "auc", "nfe_mean", "seconds_mean", "share", "offsets"}
    assert set(report["costs"]) == {"cost", "alpha", "M", "M_raised", "beta"}
    assert set(report["tradeoff"][0]) == {"accuracy", "auc", "nfe_mean", "seconds_mean", "share"}
    assert set(report["baseline_only"]) == set(report["best_single"]) == {"candidate", "accuracy", "auc", "nfe_mean",
                                                                          "seconds_mean"}
    assert set(report["oracle"]) == {"accuracy", "auc", "nfe_mean", "seconds_mean", "share"}
    assert 0 <= report["dise"]["auc"] <= 1 and report["dise"]["seconds_mean"] > 0
    assert report["n_train"] == 120 and report["n_validation"] == 80
    assert report["selector"]["inputs"] == "euler_probs" and report["costs"]["alpha"] == 0.3
    base = report["baseline_only"]["accuracy"]
    assert report["tradeoff"] and all(p["nfe_mean"] > 0 for p in report["tradeoff"])
    assert report["dise"]["nfe_mean"] <= report["baseline_only"]["nfe_mean"] + report["selector_nfe"] + 1e-9
    # calibration chose its point on this split: it must keep within --max-accuracy-drop (0.3 pp) of the baseline
    assert report["dise"]["accuracy"] >= base - 0.003 - 1e-9


def test_loaded_bundle_matches_the_in_memory_routed_model(pipeline):
    from dise_cli.loading import ModelSpec, load_model
    from dise_cli.reading import read_model
    from dise_cli.selector import read_selector
    bundled = dise_cli.load(pipeline["bundle"])
    assert bundled.manifest["programs"] == "split"
    sel = read_selector(pipeline["selector"])
    module = load_model(ModelSpec(path=pipeline["model"], arch="tiny_models:build_classifier", code_path=(TESTS,))).module
    ode = read_model(module, pipeline["x"])
    memory = RoutedModel(ode, sel).eval()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(5)) * 2
    out_b, st_b = bundled(x, return_stats=True)
    out_m, st_m = memory(x, return_stats=True)
    assert (out_b - out_m).abs().max() <= 1e-5
    assert torch.equal(st_b.integrator, st_m.integrator) and torch.equal(st_b.nfe, st_m.nfe)
    assert st_b.nfe.tolist() == [[1, 4][c] if c < 2 else st_b.nfe[i].item() for i, c in enumerate(st_b.integrator.tolist())]


def test_evaluate_and_gates(pipeline):
    res = invoke("evaluate", pipeline["bundle"], "--data", pipeline["data"], "--batch-sizes", "1,8", "--repeats", 1,
                 "--json", "-")
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert set(report) == {"schema_version", "task", "n_samples", "dise", "baseline_only", "candidates", "best_single",
                           "oracle", "timing", "gates", "made_with", "world_size", "best_single_beats_dise",
                           "single_instead"}
    assert set(report["dise"]) == {"accuracy", "auc", "nfe_mean", "nfe_integrators", "selector_nfe", "share", "fallbacks"}
    # any candidate as right as DISE and no dearer is named, the cheapest of them (not only the best single)
    as_good = sorted((c["nfe_mean"], -c["accuracy"], c["candidate"]) for c in report["candidates"]
                     if c["accuracy"] >= report["dise"]["accuracy"] and c["nfe_mean"] <= report["dise"]["nfe_mean"])
    assert report["single_instead"] == (as_good[0][2] if as_good else None)
    assert report["best_single_beats_dise"] == bool(as_good)
    plain = invoke("evaluate", pipeline["bundle"], "--data", pipeline["data"], "--batch-sizes", "8", "--repeats", 1)
    assert (f"note: {report['single_instead']} alone is right as often as DISE" in plain.stdout) == bool(as_good)
    assert set(report["candidates"][0]) == set(report["baseline_only"]) == {"candidate", "accuracy", "auc", "nfe_mean"}
    assert set(report["best_single"]) == {"candidate", "accuracy", "auc", "nfe_mean"}
    assert set(report["timing"][0]) == {"batch_size", "seconds_per_batch", "speedup_vs_baseline"}
    assert [t["batch_size"] for t in report["timing"]] == [1, 8]
    assert set(report["timing"][0]["seconds_per_batch"]) == {"dise", *[c["candidate"] for c in report["candidates"]]}
    failing = invoke("evaluate", pipeline["bundle"], "--data", pipeline["data"], "--batch-sizes", "4", "--repeats", 1,
                     "--max-nfe", 0.5)
    assert failing.exit_code == 1 and "gate not met: max_nfe" in failing.stderr


def test_run_writes_predictions(pipeline):
    from safetensors.torch import load_file
    out = pipeline["dir"] / "pred.safetensors"
    res = invoke("run", pipeline["bundle"], "--data", pipeline["data"], "--out", out, "--batch-size", 7)
    assert res.exit_code == 0, res.stderr
    pred = load_file(str(out))
    model = dise_cli.load(pipeline["bundle"])
    direct, stats = model(pipeline["x"], return_stats=True)
    assert pred["outputs"].shape == (40, 3) and (pred["outputs"] - direct).abs().max() <= 1e-5
    assert torch.equal(pred["integrator"], stats.integrator) and torch.equal(pred["nfe"], stats.nfe)


def _rewrite(bundle: Path, target: Path, change) -> None:
    with zipfile.ZipFile(bundle) as src, zipfile.ZipFile(target, "w") as dst:
        for info in src.infolist():
            data = change(info.filename, src.read(info.filename))
            if data is not None:
                dst.writestr(info.filename, data)


@pytest.mark.parametrize("case,needle", [
    ("tampered", "does not match its sha256"),
    ("missing", "is missing member 'selector.safetensors'"),
    ("newer", "format version 99"),
    ("extra", "members the manifest does not list"),
    ("pickle", "carries a pickle"),
    ("truncated", "not a readable zip"),
])
def test_bad_bundles_exit_2(pipeline, case, needle):
    bad = pipeline["dir"] / f"{case}.dise"

    def change(name, data):
        if case == "tampered" and name == "model.safetensors":
            return data[:-1] + bytes([data[-1] ^ 1])
        if case == "missing" and name == "selector.safetensors":
            return None
        if case == "newer" and name == "manifest.yaml":
            manifest = yaml.safe_load(data)
            manifest["format_version"] = 99
            return yaml.safe_dump(manifest).encode()
        return data

    if case == "truncated":
        data = pipeline["bundle"].read_bytes()
        bad.write_bytes(data[: len(data) // 3])
    elif case in ("extra", "pickle"):
        _rewrite(pipeline["bundle"], bad, change)
        with zipfile.ZipFile(bad, "a") as z:
            if case == "extra":
                z.writestr("evil.pkl", b"\x80\x04.")
        if case == "pickle":        # a program whose sample inputs are a pickle, with hashes updated
            _plant_pickle(bad)
    else:
        _rewrite(pipeline["bundle"], bad, change)
    res = invoke("evaluate", bad, "--data", pipeline["data"], "--batch-sizes", "1", "--repeats", 1)
    assert res.exit_code == 2, res.stderr
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1


def _plant_pickle(bundle: Path) -> None:
    import hashlib
    with zipfile.ZipFile(bundle) as z:
        members = {n: z.read(n) for n in z.namelist()}
    program = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(members["decoder.pt2"])) as src, zipfile.ZipFile(program, "w") as dst:
        for info in src.infolist():
            dst.writestr(info.filename, b"\x80\x04K\x01." if "sample_inputs" in info.filename else src.read(info.filename))
    members["decoder.pt2"] = program.getvalue()
    manifest = yaml.safe_load(members["manifest.yaml"])
    manifest["sha256"]["decoder.pt2"] = hashlib.sha256(members["decoder.pt2"]).hexdigest()
    members["manifest.yaml"] = yaml.safe_dump(manifest).encode()
    with zipfile.ZipFile(bundle, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


def test_profile_from_another_model_is_exit_2(pipeline):
    other = tiny_models.build_classifier()
    with torch.no_grad():
        for p in other.parameters():
            p.add_(0.01)
    torch.save(other.state_dict(), pipeline["dir"] / "other.pt")
    res = invoke("train-selector", pipeline["dir"] / "other.pt", "--data", pipeline["train"], "--profile", pipeline["profile"],
                 "--arch", "tiny_models:build_classifier", "--code-path", TESTS, "--out", pipeline["dir"] / "s2.safetensors")
    assert res.exit_code == 2 and "was made from another model" in res.stderr
    assert not (pipeline["dir"] / "s2.safetensors").exists()


def test_nonfinite_cheap_integrator_falls_back_to_the_baseline(pipeline):
    model = dise_cli.load(pipeline["bundle"])
    model.selector.offsets = [-1e6, 0.0, 0.0]             # send everything to euler
    real_solve = model.integrators[0].solve

    def poisoned(field, h0, t, **kw):                      # euler "blows up" on the first sample
        sol = real_solve(field, h0, t, **kw)
        sol.ys[:, 0] = float("nan")
        sol.status[0] = 2
        return sol

    model.integrators[0].solve = poisoned
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(2))
    out, stats = model(x, return_stats=True)
    assert stats.fallback.tolist() == [True] + [False] * 5
    assert torch.isfinite(out).all() and stats.status.tolist() == [0] * 6
    assert stats.nfe[0] > 1 and stats.nfe[1:].tolist() == [1] * 5


def test_regression_pipeline_with_eq5_costs(tmp_path):
    """A root-block model returning trajectories, float targets: Γ-based costs all the way through."""
    module = tiny_models.build_wrapper()
    x = _X(120)
    with torch.no_grad():
        y = module(x)                                  # [T, N, 2], time-major as odeint returns it
    report = _profile_and_train(tmp_path, module, "build_wrapper", x, y, epochs=3)
    arch = ["--code-path", TESTS]
    assert report["task"] == "regression" and report["costs"]["beta"] > 0 and report["selector"]["inputs"] == "euler"
    assert invoke("export", tmp_path / "m.pt", "--arch", "tiny_models:build_wrapper", *arch, "--selector",
                  tmp_path / "s.safetensors", "--out", tmp_path / "w.dise").exit_code == 0
    res = invoke("evaluate", tmp_path / "w.dise", "--data", tmp_path / "d.safetensors", "--batch-sizes", "16",
                 "--repeats", 1, "--json", "-")
    assert res.exit_code == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["task"] == "regression" and ev["dise"]["mean_error"] is not None


def test_selector_for_data_without_labels(tiny):
    d = tiny["dir"]
    save_file({"x": tiny["x"]}, str(d / "nolabels.safetensors"))
    assert invoke("profile", tiny["model"], "--data", d / "nolabels.safetensors", *tiny["arch"],
                  "--out", d / "p.safetensors").exit_code == 0
    res = invoke("train-selector", tiny["model"], "--data", d / "nolabels.safetensors", "--profile", d / "p.safetensors",
                 "--arch", "tiny_models:build_classifier", "--code-path", TESTS, "--epochs", 2,
                 "--out", d / "s.safetensors")
    assert res.exit_code == 0, res.stderr


def test_selector_file_damage(pipeline):
    from dise_cli.errors import InputError
    from dise_cli.selector import read_selector
    data = pipeline["selector"].read_bytes()
    (pipeline["dir"] / "half.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="not a readable safetensors"):
        read_selector(pipeline["dir"] / "half.safetensors")
    save_file({"w": torch.zeros(1)}, str(pipeline["dir"] / "other.safetensors"))
    with pytest.raises(InputError, match="is not a dise selector"):
        read_selector(pipeline["dir"] / "other.safetensors")


def test_selector_and_profile_must_belong_together(pipeline):
    d = pipeline["dir"]
    res = invoke("export", pipeline["model"], *pipeline["arch"], "--selector", pipeline["selector"], "--profile",
                 pipeline["profile"], "--out", d / "ok.dise")
    assert res.exit_code == 0, res.stderr
    assert invoke("profile", pipeline["model"], "--data", pipeline["train"], *pipeline["arch"], "--candidates",
                  "euler:steps=2,dopri5:rtol=1e-3,atol=1e-3", "--out", d / "p2.safetensors").exit_code == 0
    res = invoke("export", pipeline["model"], *pipeline["arch"], "--selector", pipeline["selector"], "--profile",
                 d / "p2.safetensors", "--out", d / "bad.dise")
    assert res.exit_code == 2 and "chooses among" in res.stderr and not (d / "bad.dise").exists()


def test_demo_runs_the_whole_pipeline(tmp_path):
    res = invoke("demo", "--train-limit", 300, "--out", tmp_path, "--json", tmp_path / "demo.json")
    assert res.exit_code == 0, res.stderr
    for row in ("DOPRI5-only", "Euler-only", "RK4-only", "DISE", "oracle"):
        assert row in res.stdout
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["n_samples"] == 1000 and report["timing"][0]["batch_size"] == 256
    assert (tmp_path / "mnist_odenet.dise").exists() and (tmp_path / "selector.safetensors").exists()
    assert report["dise"]["nfe_mean"] < report["baseline_only"]["nfe_mean"]


def test_forward_that_runs_its_solve_exports_as_one_program(tmp_path):
    """A block called from a custom forward: the forward is exported whole, its solve as dise::solve."""
    module = tiny_models.build_nested()
    x = _X(80)
    with torch.no_grad():
        y = module(x).argmax(1)
    report = _profile_and_train(tmp_path, module, "build_nested", x, y, epochs=2)
    assert report["selector"]["inputs"] == "h0"          # no separate decoder: the paper's v(h0)
    res = invoke("export", tmp_path / "m.pt", "--arch", "tiny_models:build_nested", "--code-path", TESTS,
                 "--selector", tmp_path / "s.safetensors", "--out", tmp_path / "n.dise")
    assert res.exit_code == 0 and "the model's forward, its solve left to dise" in res.stderr, res.stderr
    model = dise_cli.load(tmp_path / "n.dise")
    assert model.manifest["programs"] == "whole"
    from dise_cli.reading import read_model
    from dise_cli.selector import read_selector
    memory = RoutedModel(read_model(module, x), read_selector(tmp_path / "s.safetensors")).eval()
    out, stats = model(x[:10], return_stats=True)
    want, want_stats = memory(x[:10], return_stats=True)
    assert (out - want).abs().max() <= 1e-5 and torch.equal(stats.nfe, want_stats.nfe)


def test_model_that_does_not_export_is_rebuilt_from_its_arch(tmp_path):
    """A forward torch.export cannot capture (a Python branch on a value): the manifest names --arch."""
    module = tiny_models.build_unexportable()
    x = _X(80)
    with torch.no_grad():
        y = module(x).argmax(1)
    _profile_and_train(tmp_path, module, "build_unexportable", x, y, epochs=2)
    arch = ["--code-path", TESTS]
    res = invoke("export", tmp_path / "m.pt", "--arch", "tiny_models:build_unexportable", *arch, "--selector",
                 tmp_path / "s.safetensors", "--out", tmp_path / "n.dise")
    assert res.exit_code == 0 and "rebuilds the model with tiny_models:build_unexportable" in res.stderr
    model = dise_cli.load(tmp_path / "n.dise", code_path=[TESTS])
    assert model.manifest["programs"] is None and model.manifest["arch"] == "tiny_models:build_unexportable"
    out, stats = model(x[:10], return_stats=True)
    assert out.shape == (10, 3) and len(stats.nfe) == 10


def test_same_inputs_and_seed_give_byte_identical_selector_and_bundle(pipeline):
    d = pipeline["dir"]
    for i in (1, 2):
        assert invoke("train-selector", pipeline["model"], "--data", pipeline["train"], "--profile", pipeline["profile"],
                      "--arch", "tiny_models:build_classifier", "--code-path", TESTS, "--epochs", 3,
                      "--out", d / f"s{i}.safetensors").exit_code == 0
        assert invoke("export", pipeline["model"], *pipeline["arch"], "--selector", d / f"s{i}.safetensors",
                      "--out", d / f"b{i}.dise").exit_code == 0
    assert (d / "s1.safetensors").read_bytes() == (d / "s2.safetensors").read_bytes()
    assert (d / "b1.dise").read_bytes() == (d / "b2.dise").read_bytes()


def test_interrupted_export_leaves_no_bundle(pipeline, monkeypatch):
    """Ctrl-C in the middle of an export (here: inside torch.export) exits 130 and writes nothing."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.export, "export", interrupted)
    out = pipeline["dir"] / "interrupted.dise"
    before = set(pipeline["dir"].iterdir())
    res = invoke("export", pipeline["model"], *pipeline["arch"], "--selector", pipeline["selector"], "--out", out)
    assert res.exit_code == 130 and res.stderr.strip() == "error: interrupted; nothing was written"
    assert set(pipeline["dir"].iterdir()) == before


def _profile_and_train(tmp_path, module, factory: str, x, y, epochs: int) -> dict:
    """Save ``module`` and its data, profile, train a selector; the train-selector JSON report."""
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    arch = ["--code-path", TESTS]
    assert invoke("profile", tmp_path / "m.pt", "--arch", f"tiny_models:{factory}", *arch, "--data",
                  tmp_path / "d.safetensors", "--out", tmp_path / "p.safetensors").exit_code == 0
    res = invoke("train-selector", tmp_path / "m.pt", "--arch", f"tiny_models:{factory}", *arch, "--data",
                 tmp_path / "d.safetensors", "--profile", tmp_path / "p.safetensors", "--epochs", epochs,
                 "--out", tmp_path / "s.safetensors", "--json", "-")
    assert res.exit_code == 0, res.stderr
    return json.loads(res.stdout)


def _X(n: int) -> torch.Tensor:
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
