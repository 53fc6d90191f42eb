"""Issue 12: binary single-logit classifiers and the AUC, cost measured in time, the paper's Table 4
selector, and a tiny irregular-series latent ODE through the whole pipeline."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import dise_cli
import tiny_models
from dise_cli.auc import roc_auc
from dise_cli.cli import app
from dise_cli.costs import cost_labels
from dise_cli.errors import InputError, UsageError
from dise_cli.judging import Judge, check_labels
from dise_cli.profiles import Profile
from dise_cli.reports import summarize
from dise_cli.selector import SelectorNet, SelectorSpec

TESTS = str(Path(__file__).resolve().parent)


def test_auc_against_hand_computed_values():
    # binary: positives 0.35, 0.8; negatives 0.1, 0.4 -> pairs won 0.35>0.1, 0.8>0.1, 0.8>0.4: 3 of 4
    assert roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative counts half: (1 + 0.5) / 2
    assert roc_auc(torch.tensor([[0.2], [0.5], [0.5]]), torch.tensor([0, 0, 1])) == 0.75
    # one-vs-rest macro over softmax probabilities: class 0 (positives 0.7, 0.15 against 0.2) wins 1 of 2,
    # class 1 (0.5 against 0.2, 0.45) wins 2 of 2, class 2 has no positive and is left out
    scores = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.2, 0.5, 0.3], [0.15, 0.45, 0.4]], dtype=torch.float64))
    assert roc_auc(scores, torch.tensor([0, 1, 0])) == pytest.approx((0.5 + 1.0) / 2)
    assert roc_auc(torch.tensor([1.0, 2.0]), torch.tensor([1, 1])) is None       # one class only


def test_binary_single_logit_judging():
    judge = Judge("classification")
    logits = torch.tensor([[2.0], [-1.0], [0.5], [float("nan")]])
    labels = torch.tensor([1, 1, 0, 1])
    assert judge.predict(logits).tolist() == [1, 0, 1, 0]
    assert judge.correct(logits, labels).tolist() == [True, False, False, False]
    assert judge.predict(logits[:3, 0]).tolist() == [1, 0, 1]                 # a squeezed [N] logit too
    check_labels("classification", labels, logits, "d")
    with pytest.raises(InputError, match="one logit"):
        check_labels("classification", torch.tensor([0, 2]), logits, "d")


def _profile(nfe, correct, timing=None) -> Profile:
    nfe = torch.tensor(nfe, dtype=torch.int32)
    return Profile(candidates=["euler:steps=1", "rk4:steps=1", "dopri5"], baseline=2, task="classification",
                   t_span=[0.0, 1.0], index=torch.arange(len(nfe)), nfe=nfe,
                   status=torch.zeros_like(nfe, dtype=torch.uint8), correct=torch.tensor(correct),
                   pred=torch.zeros(nfe.shape, dtype=torch.int64), timing=timing)


def test_cost_in_seconds_against_a_hand_computed_profile():
    # euler 1 µs per NFE, rk4 2 µs, dopri5 4 µs: Δ in units of dopri5's 4 µs per NFE
    timing = {"seconds_per_nfe": [1e-6, 2e-6, 4e-6], "seconds_per_step": [1e-6, 8e-6, 24e-6], "device": "cpu"}
    profile = _profile([[10, 4, 20], [10, 4, 26]], [[True, True, True], [False, True, True]], timing)
    labels = cost_labels(profile, alpha=1.0, M=1000.0, cost="seconds")
    assert labels.delta.tolist() == [[2.5, 2.0, 20.0], [2.5, 2.0, 26.0]]
    assert labels.costs.tolist() == [[2.5, 2.0, 20.0], [1000.0, 2.0, 26.0]]
    by_nfe = cost_labels(profile, alpha=1.0, M=1000.0)
    assert by_nfe.costs.tolist() == [[10.0, 4.0, 20.0], [1000.0, 4.0, 26.0]]
    assert summarize(profile)["oracle"]["seconds_mean"] == pytest.approx((4e-6 * 2 * 2) / 2 / 1)   # rk4 for both
    with pytest.raises(UsageError, match="no timings"):
        cost_labels(_profile([[1, 4, 20]], [[True, True, True]]), cost="seconds")


def test_the_papers_table4_selector():
    spec = SelectorSpec.for_shape((20,), 3, "table4", dropout=0.25)
    net = SelectorNet(spec)
    linears = [m for m in net.body if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(20, 10), (10, 10), (10, 5), (5, 5), (5, 3)]
    relus = [i for i, m in enumerate(net.body) if isinstance(m, torch.nn.ReLU)]
    dropout = [m for m in net.body if isinstance(m, torch.nn.Dropout)]
    assert len(relus) == 4 and len(dropout) == 1 and dropout[0].p == 0.25
    assert net.body[relus[-1] + 1] is dropout[0]                               # ψ(σ(FC)) at the 4th layer
    assert SelectorSpec.for_shape((20,), 3, "auto").kind == "mlp"              # auto still goes by the shape
    with pytest.raises(UsageError, match="--dropout"):
        SelectorSpec.for_shape((20,), 3, "mlp", dropout=0.25)


def test_a_tiny_irregular_series_model_through_the_whole_pipeline(tmp_path):
    """Profile, a Table 4 selector priced in seconds, export, evaluate and run on 48 short series;
    binary accuracy and AUC in every report."""
    module = tiny_models.build_irregular_binary()
    x = tiny_models.irregular_series(48)
    with torch.no_grad():
        y = (module(x)[:, 0] > 0).long()
    y[:5] = 1 - y[:5]
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    common = [tmp_path / "m.pt", "--arch", "tiny_models:build_irregular_binary", "--code-path", TESTS,
              "--data", tmp_path / "d.safetensors"]
    runner = CliRunner()

    def invoke(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.stderr
        return res

    res = invoke("profile", *common, "--out", tmp_path / "p.safetensors", "--json", "-")
    report = json.loads(res.stdout)
    assert report["task"] == "classification"
    base = next(r for r in report["candidates"] if r["candidate"] == report["baseline"])
    assert base["accuracy"] == pytest.approx(43 / 48, abs=1e-4)                 # 5 flipped labels
    assert all(0 <= r["auc"] <= 1 for r in report["candidates"]) and report["oracle"]["auc"] is not None
    res = invoke("train-selector", *common, "--profile", tmp_path / "p.safetensors", "--selector-arch", "table4",
                 "--dropout", 0.25, "--cost", "seconds", "--epochs", 3, "--inputs", "h0",
                 "--out", tmp_path / "s.safetensors", "--json", "-")
    train = json.loads(res.stdout)
    assert train["selector"]["kind"] == "table4" and train["costs"]["cost"] == "seconds"
    assert train["dise"]["auc"] is not None and train["dise"]["seconds_mean"] > 0
    invoke("export", tmp_path / "m.pt", "--arch", "tiny_models:build_irregular_binary", "--code-path", TESTS,
           "--selector", tmp_path / "s.safetensors", "--out", tmp_path / "m.dise")
    res = invoke("evaluate", tmp_path / "m.dise", "--data", tmp_path / "d.safetensors", "--code-path", TESTS,
                 "--batch-sizes", 16, "--repeats", 1, "--json", "-")
    evaluation = json.loads(res.stdout)
    assert evaluation["dise"]["auc"] is not None and all("auc" in c for c in evaluation["candidates"])
    result = dise_cli.run(tmp_path / "m.dise", tmp_path / "d.safetensors", code_path=[TESTS])
    assert result.outputs.shape == (48, 1)


def invoke(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _rubanova(tmp_path, build: str):
    """A Rubanova latent ODE saved with its data: the labels (a classifier) or targets (the raw
    reconstruction, in the model's own [1, N, T, D] layout) are the model's own answers."""
    import rubanova_latent_ode as rub
    model = getattr(rub, build)()
    x, t = rub.make_data()
    with torch.no_grad():
        out = model(x, t)
        if build == "classifier_last":         # balance the two classes around the median logit gap
            model.classifier[-1].bias[1] -= (out[:, 1] - out[:, 0]).median() + 1e-4
            out = model(x, t).argmax(-1)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": x, "y": out.contiguous(), "t": t}, str(tmp_path / "d.safetensors"))
    return model, x, t, out


@pytest.mark.parametrize("build", ["classifier_last", "regression_raw"])
def test_rubanova_latent_ode_keeps_its_inputs_on_axis_1(tmp_path, build):
    """Rubanova's DiffeqSolver solves [n_traj_samples, N, D]: dise finds the inputs on axis 1, routes the
    latent dopri5 solve (not the ODE-RNN encoder's Euler solves between observations), passes the data's
    grid as the forward's time argument everywhere (the rebuilt bundle too), and reads a raw output
    [1, N, T, D] with its targets in the same layout."""
    model, x, t, out = _rubanova(tmp_path, build)
    arch = ["--arch", f"rubanova_latent_ode:{build}", "--code-path", TESTS]
    data = ["--data", tmp_path / "d.safetensors"]
    res = invoke("inspect", tmp_path / "m.pt", *arch, *data, "--json", "-")
    assert res.exit_code == 0, res.stderr
    info = json.loads(res.stdout)
    assert info["own_solver"]["method"] == "dopri5" and info["fidelity"]["passed"]
    assert info["state"] == "(1, N, 6)" and info["t_span"] == [float(v) for v in t]
    res = invoke("profile", tmp_path / "m.pt", *arch, *data, "--out", tmp_path / "p.sft", "--json", "-")
    assert res.exit_code == 0, res.stderr
    profile = json.loads(res.stdout)
    base = next(c for c in profile["candidates"] if c["candidate"] == profile["baseline"])
    assert profile["baseline"] == "dopri5:rtol=0.001,atol=0.0001" and base["status"]["ok"] == len(x)
    if build == "classifier_last":
        assert 0 < int(out.sum()) < len(out) and base["accuracy"] > 0.9
    res = invoke("train-selector", tmp_path / "m.pt", *arch, *data, "--profile", tmp_path / "p.sft", "--epochs", 2,
                 "--out", tmp_path / "s.sft")
    assert res.exit_code == 0, res.stderr
    res = invoke("export", tmp_path / "m.pt", *arch, "--selector", tmp_path / "s.sft", "--out", tmp_path / "b.dise")
    assert res.exit_code == 0, res.stderr
    res = invoke("evaluate", tmp_path / "b.dise", *data, "--code-path", TESTS, "--batch-sizes", 8, "--repeats", 1)
    assert res.exit_code == 0, res.stderr
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])
    with torch.no_grad():
        got, stats = bundle(x, return_stats=True)
        own = model(x, t)
    own = own.transpose(0, 1) if build == "regression_raw" else own        # a bundle puts the samples first
    rows = (stats.integrator == len(profile["candidates"]) - 1).nonzero().flatten()    # routed to dopri5
    assert got.shape == own.shape
    torch.testing.assert_close(got[rows], own[rows], rtol=1e-2, atol=1e-2)   # dopri5 at 1e-3: per sample vs batched
    if build == "classifier_last":
        assert float((got.argmax(-1) == out).float().mean()) >= 0.9


def test_a_bundle_takes_the_datas_grid_as_the_models_time_argument(tmp_path):
    """forward(data, t): the bundle is run on data with another grid: the model gets that grid (the solve's
    NFE and outputs follow it), not the one it was exported with; inputs of another shape are exit 2."""
    import rubanova_latent_ode as rub
    model, x, t, out = _rubanova(tmp_path, "classifier_last")
    arch = ["--arch", "rubanova_latent_ode:classifier_last", "--code-path", TESTS]
    data = ["--data", tmp_path / "d.safetensors"]
    assert invoke("profile", tmp_path / "m.pt", *arch, *data, "--out", tmp_path / "p.sft").exit_code == 0
    assert invoke("train-selector", tmp_path / "m.pt", *arch, *data, "--profile", tmp_path / "p.sft", "--epochs", 2,
                  "--out", tmp_path / "s.sft").exit_code == 0
    assert invoke("export", tmp_path / "m.pt", *arch, "--selector", tmp_path / "s.sft",
                  "--out", tmp_path / "b.dise").exit_code == 0
    x2, t2 = rub.make_data(n=16, n_tp=12, seed=2)
    save_file({"x": x2, "t": t2}, str(tmp_path / "d2.safetensors"))
    res = invoke("run", tmp_path / "b.dise", "--data", tmp_path / "d2.safetensors", "--code-path", TESTS,
                 "--out", tmp_path / "pred.safetensors")
    assert res.exit_code == 0, res.stderr
    from safetensors.torch import load_file
    pred = load_file(str(tmp_path / "pred.safetensors"))
    euler = pred["integrator"] == 0
    assert bool((pred["nfe"][euler] == 11).all())                 # one Euler step per interval of the 12-point grid
    with torch.no_grad():
        own = model(x2, t2)
    assert float((pred["outputs"].argmax(-1) == own.argmax(-1)).float().mean()) >= 0.9
    bundle = dise_cli.load(tmp_path / "b.dise", code_path=[TESTS])            # the Python API takes the grid too
    with torch.no_grad():
        out, stats = bundle(x2, t2, return_stats=True)
    assert torch.equal(out, pred["outputs"]) and torch.equal(stats.nfe, pred["nfe"])
    save_file({"x": x2[:, 0].contiguous(), "t": t2}, str(tmp_path / "d3.safetensors"))    # one observation: rank 1
    res = invoke("run", tmp_path / "b.dise", "--data", tmp_path / "d3.safetensors", "--code-path", TESTS,
                 "--out", tmp_path / "pred3.safetensors")
    assert res.exit_code == 2 and "inputs of shape (6,)" in res.stderr and "d3.safetensors" in res.stderr
    save_file({"x": x2.double(), "t": t2}, str(tmp_path / "d4.safetensors"))   # float64 for a float32 model: exit 2
    res = invoke("evaluate", tmp_path / "b.dise", "--data", tmp_path / "d4.safetensors", "--code-path", TESTS)
    assert res.exit_code == 2 and "dtype float64" in res.stderr and "made for float32" in res.stderr


def test_float_labels_of_a_binary_classifier_are_class_labels(tmp_path):
    """BCEWithLogitsLoss wants float targets, so people keep 0. and 1.: with one output that is a
    logit, they are a binary classifier's labels (judged by logit > 0, with a note), in profile,
    evaluate and finetune alike; --task regression judges by error as before. A probability output
    in [0, 1] is not read as a logit."""
    module = tiny_models.build_irregular_binary()
    x = tiny_models.irregular_series(32, seed=3)
    with torch.no_grad():
        module.head.bias -= module(x)[:, 0].median()          # logits of both signs, as a trained head gives
        logits = module(x)[:, 0]
    y = (logits > 0).float()
    y[:4] = 1 - y[:4]
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    common = [tmp_path / "m.pt", "--arch", "tiny_models:build_irregular_binary", "--code-path", TESTS,
              "--data", tmp_path / "d.safetensors"]
    res = CliRunner().invoke(app, ["profile", *map(str, common), "--out", str(tmp_path / "p.sft"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["task"] == "classification" and "floats holding class indices" in res.stderr
    base = next(r for r in report["candidates"] if r["candidate"] == report["baseline"])
    assert base["accuracy"] == pytest.approx(28 / 32, abs=1e-4)                 # 4 flipped labels
    res = CliRunner().invoke(app, ["profile", *map(str, common), "--task", "regression", "--out",
                                   str(tmp_path / "r.sft"), "--json", "-"])
    assert res.exit_code == 0 and json.loads(res.stdout)["task"] == "regression"
    res = CliRunner().invoke(app, ["finetune", *map(str, common), "--epochs", 1, "--out", str(tmp_path / "f.pt"),
                                   "--json", "-"])
    assert res.exit_code == 0, res.stderr
    from dise_cli.judging import detect_task
    assert detect_task(y, logits[:, None]) == "classification" and detect_task(y * 0.5, logits[:, None]) == "regression"


def test_a_probability_output_is_judged_above_one_half(tmp_path):
    """A final sigmoid gives p in [0, 1], which is > 0 for every sample: judged as a logit, every label 1
    would be right and every 0 wrong whatever the solver. Such an output (with int or float labels)
    decides class 1 above 0.5, in profile, evaluate and finetune (BCE on the probability), with a note."""
    from dise_cli.judging import Judge, binary_threshold, detect_task
    logits = torch.linspace(-3, 3, 16)[:, None]
    y = (logits[:, 0] > 0).long()
    assert binary_threshold(torch.sigmoid(logits), y) == 0.5 and binary_threshold(logits, y) == 0.0
    assert binary_threshold(torch.full((16, 1), 0.7), y) == 0.0       # a constant fits both rules alike
    assert detect_task(y.float(), torch.sigmoid(logits)) == "classification"
    assert Judge("classification", threshold=0.5).correct(torch.sigmoid(logits), y).all()
    module = tiny_models.build_irregular_binary_sigmoid()
    x = tiny_models.irregular_series(32, seed=3)
    with torch.no_grad():
        module.inner.head.bias -= torch.logit(module(x)[:, 0]).median()
        p = module(x)[:, 0]
    y = (p > 0.5).long()
    y[-4:] = 1 - y[-4:]
    torch.save(module.state_dict(), tmp_path / "m.pt")
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    common = [str(tmp_path / "m.pt"), "--arch", "tiny_models:build_irregular_binary_sigmoid", "--code-path", TESTS,
              "--data", str(tmp_path / "d.safetensors")]
    res = CliRunner().invoke(app, ["profile", *common, "--out", str(tmp_path / "p.sft"), "--json", "-"])
    assert res.exit_code == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["task"] == "classification" and "above 0.5" in res.stderr
    base = next(r for r in report["candidates"] if r["candidate"] == report["baseline"])
    assert base["accuracy"] == pytest.approx(28 / 32, abs=1e-4)
    for args in (["train-selector", *common, "--profile", str(tmp_path / "p.sft"), "--epochs", "2",
                  "--out", str(tmp_path / "s.sft")],
                 ["export", *common[:5], "--selector", str(tmp_path / "s.sft"), "--out", str(tmp_path / "b.dise")]):
        res = CliRunner().invoke(app, args)
        assert res.exit_code == 0, res.stderr
    res = CliRunner().invoke(app, ["evaluate", str(tmp_path / "b.dise"), "--data", str(tmp_path / "d.safetensors"),
                                   "--code-path", TESTS, "--batch-sizes", "8", "--repeats", "1", "--json", "-"])
    assert res.exit_code == 0, res.stderr
    evaluated = json.loads(res.stdout)
    assert evaluated["baseline_only"]["accuracy"] == pytest.approx(28 / 32, abs=1e-4)
    res = CliRunner().invoke(app, ["finetune", *common, "--epochs", "1", "--out", str(tmp_path / "f.pt")])
    assert res.exit_code == 0, res.stderr


def test_a_solve_on_the_union_of_the_batchs_times_is_said_to_depend_on_the_batch(tmp_path):
    """A model that solves on the union of its batch's end times: a sample's NFE and output depend on the
    samples beside it (a helper measured Γ 0.052 at batch 256 and 0.219 at 16, with no word); now a note."""
    import families
    model = families.build_union_times_regressor()
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(32, 2, generator=gen), (torch.rand(32, generator=gen) * 10).round() / 10 + 0.1
    with torch.no_grad():
        y = model(x, t)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    torch.save({"x": x, "t": t, "y": y}, tmp_path / "d.pt")
    res = CliRunner().invoke(app, ["inspect", str(tmp_path / "m.pt"), "--arch", "families:build_union_times_regressor",
                                   "--code-path", TESTS, "--data", str(tmp_path / "d.pt"), "--x-key", "x,t",
                                   "--json", "-"])
    assert res.exit_code == 0, res.stderr
    assert any("another time grid for another batch" in n for n in json.loads(res.stdout)["notes"])
