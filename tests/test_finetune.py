"""Regularised fine-tuning: R_err's gradient, each regulariser decreasing, the command end to end."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import tiny_models
from dise_cli.cli import app
from dise_cli.finetuning import REGULARISERS, regulariser
from dise_cli.integrators import AdaptiveHeun, Bosh3, Dopri5, Dopri8, Fehlberg2, Tsit5, VectorField
from dise_cli.reading import read_model

TESTS = str(Path(__file__).resolve().parent)
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_r_err_gradient_matches_finite_differences():
    """One accepted step of fixed size (first_step = 1), so R_err is a smooth function of W."""
    torch.manual_seed(0)
    w = (0.3 * torch.randn(3, 3, dtype=torch.float64)).requires_grad_(True)
    y0 = torch.randn(4, 3, dtype=torch.float64)
    solver = Dopri5(rtol=1e-2, atol=1e-2, first_step=1.0)

    def r_err(weight):
        sol = solver.solve(VectorField(lambda t, y: torch.tanh(y @ weight.T)), y0, torch.tensor([0.0, 1.0]),
                           record_errors=True)
        assert sol.n_steps.tolist() == [1] * 4 and sol.nfe.tolist() == [7] * 4
        return sol.step_errors.per_sample(4).sum()

    r_err(w).backward()
    eps = 1e-6
    fd = torch.zeros_like(w)
    with torch.no_grad():
        for i in range(3):
            for j in range(3):
                dw = torch.zeros_like(w)
                dw[i, j] = eps
                fd[i, j] = (r_err(w + dw) - r_err(w - dw)) / (2 * eps)
    assert w.grad.abs().max() > 1e-4
    torch.testing.assert_close(w.grad, fd, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("cls,h", [(Bosh3, 0.5), (AdaptiveHeun, 0.5), (Fehlberg2, 0.5), (Dopri8, 2.0), (Tsit5, 0.5)],
                         ids=lambda c: getattr(c, "name", ""))
def test_r_err_of_every_embedded_method_has_the_right_gradient(cls, h):
    """R_err is the error estimate of whichever embedded pair solves: its gradient is a derivative."""
    torch.manual_seed(0)
    w = (0.3 * torch.randn(3, 3, dtype=torch.float64)).requires_grad_(True)
    y0 = torch.randn(4, 3, dtype=torch.float64)
    solver = cls(rtol=1.0, atol=1.0, first_step=h)   # one accepted step of size h

    def r_err(weight):
        sol = solver.solve(VectorField(lambda t, y: torch.tanh(y @ weight.T)), y0, torch.tensor([0.0, h]),
                           record_errors=True)
        assert sol.n_steps.tolist() == [1] * 4
        return sol.step_errors.per_sample(4).sum()

    r_err(w).backward()
    eps = 1e-4      # dopri8's estimate is a difference of O(1) terms: a smaller step drowns in round-off
    fd = torch.zeros_like(w)
    with torch.no_grad():
        for i in range(3):
            for j in range(3):
                dw = torch.zeros_like(w)
                dw[i, j] = eps
                fd[i, j] = (r_err(w + dw) - r_err(w - dw)) / (2 * eps)
    assert w.grad.abs().max() > 1e-8
    torch.testing.assert_close(w.grad, fd, rtol=1e-4, atol=1e-12)


def test_finetune_trains_through_the_models_own_adaptive_method(tmp_path):
    """A model that solves with bosh3 is fine-tuned through bosh3's error estimates (its baseline)."""
    model = tiny_models.build_bosh3()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    x = torch.randn(48, 2, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        y = model(x).argmax(-1)
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    import json
    res = invoke("finetune", tmp_path / "m.pt", "--arch", "tiny_models:build_bosh3", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--reg", "err", "--lam", "1", "--epochs", 1,
                 "--batch-size", 16, "--out", tmp_path / "t.pt", "--json", tmp_path / "ft.json")
    assert res.exit_code == 0, res.stderr
    report = json.loads((tmp_path / "ft.json").read_text())
    assert report["history"][1]["reg"] > 0 and report["history"][1]["train_nfe"] > 0


def test_a_forward_that_solves_another_way_when_training_is_named(tmp_path):
    model = tiny_models.build_solves_another_way_when_training().eval()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    x = torch.randn(24, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(-1)
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    res = invoke("finetune", tmp_path / "m.pt", "--arch", "tiny_models:build_solves_another_way_when_training",
                 "--code-path", TESTS, "--data", tmp_path / "d.safetensors", "--epochs", 1, "--out", tmp_path / "t.pt")
    assert res.exit_code == 2 and "in training mode the model's forward does not make the solve" in res.stderr
    assert not (tmp_path / "t.pt").exists()


def test_a_learned_integration_time_is_held_and_said_so(tmp_path):
    """dise's solvers take the grid as data: a grid computed from a parameter stays as it is, with a note
    (it used to stay silently)."""
    model = tiny_models.build_learned_end_time()
    torch.save(model.state_dict(), tmp_path / "m.pt")
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        y = model(x).argmax(-1)
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    res = invoke("finetune", tmp_path / "m.pt", "--arch", "tiny_models:build_learned_end_time", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--epochs", 1, "--batch-size", 16, "--out", tmp_path / "t.pt")
    assert res.exit_code == 0, res.stderr
    assert "time grid depends on its parameters" in res.stderr
    tuned = torch.load(tmp_path / "t.pt")
    assert torch.equal(tuned["end"], model.end.detach()) and not torch.equal(tuned["head.weight"], model.head.weight)


def test_a_checkpoint_of_several_entries_is_written_as_one_state_dict_and_said_so(tmp_path):
    """torchcfm's checkpoint of ``net_model`` and ``ema_model`` read with --state-key: the fine-tuned file
    is the model's state dict alone; a user loading ``ckpt['ema_model']`` from it would fail, so the
    output says what it holds (it was silent)."""
    model = tiny_models.build_classifier()
    torch.save({"net_model": model.state_dict(), "ema_model": model.state_dict(), "step": 10}, tmp_path / "c.pt")
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        y = model(x).argmax(-1)
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    res = invoke("finetune", tmp_path / "c.pt", "--arch", "tiny_models:build_classifier", "--code-path", TESTS,
                 "--state-key", "ema_model", "--data", tmp_path / "d.safetensors", "--epochs", 1, "--batch-size", 16,
                 "--out", tmp_path / "t.pt")
    assert res.exit_code == 0, res.stderr
    assert "holds the fine-tuned model's state dict alone" in res.stderr
    assert set(torch.load(tmp_path / "t.pt")) == set(model.state_dict())


@pytest.mark.parametrize("reg", [r for r in REGULARISERS if r != "none"])
def test_each_regulariser_decreases_when_minimised(reg):
    module = tiny_models.build_classifier()
    ode = read_model(module, torch.randn(4, 2))
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0)) * 2
    solver = Dopri5()
    opt = torch.optim.Adam(ode.func_modules[0].parameters(), lr=1e-2)

    def value():
        solved = []
        ode.forward_with(x, lambda p: (solved.append(solver.solve(p.field, p.h0, p.t, record_errors=True)),
                                       solved[-1].ys)[1])
        return regulariser(ode, reg, solved[0], len(x))

    first = float(value().detach())
    for _ in range(15):
        r = value()
        opt.zero_grad()
        r.backward()
        opt.step()
    assert float(value().detach()) < 0.8 * first


def test_finetune_end_to_end(tiny):
    d = tiny["dir"]
    out = d / "tuned.pt"
    res = invoke("finetune", tiny["model"], "--data", tiny["data"], *tiny["arch"], "--reg", "err", "--lam", "1",
                 "--epochs", 2, "--batch-size", 16, "--schedule", "cosine", "--out", out, "--json", d / "ft.json")
    assert res.exit_code == 0, res.stderr
    import json
    report = json.loads((d / "ft.json").read_text())
    assert set(report) == {"schema_version", "reg", "lam", "epochs", "schedule", "kept_epoch", "state_rms_change",
                           "history", "made_with"}
    assert report["reg"] == "err" and [h["epoch"] for h in report["history"]] == [0, 1, 2]
    assert {"loss", "task_loss", "reg", "train_nfe", "lr", "validation"} <= set(report["history"][1])
    # cosine: the rate has decayed to (nearly) 0 by the last step, from 3e-4 at the start
    assert report["history"][1]["lr"] < 3e-4 and report["history"][2]["lr"] < 1e-6
    assert all(h["validation"]["state_rms"] > 0 for h in report["history"])
    assert "kept epoch" in res.stdout
    # 4 held-out samples cannot resolve 0.3 points, and the command says so
    assert "the validation data has 4 samples" in res.stderr and "is 0.012 of them" in res.stderr
    prof = invoke("profile", out, "--data", tiny["data"], *tiny["arch"], "--out", d / "p.safetensors")
    assert prof.exit_code == 0, prof.stderr
    safe = invoke("finetune", tiny["dir"] / "model.safetensors", "--data", tiny["data"], *tiny["arch"], "--reg", "l2",
                  "--lam", "0.01", "--epochs", 1, "--out", d / "tuned.safetensors")
    assert safe.exit_code == 0 and (d / "tuned.safetensors").exists()


@pytest.mark.parametrize("case,needle", [
    ("nolabels", "has no labels"),
    ("reg", "unknown regulariser 'err2'"),
    ("lam", "λ must be >= 0"),
    ("loss", "--loss: cannot import module"),
    ("schedule", "--schedule: unknown schedule 'step'"),
])
def test_bad_finetune_input(tiny, case, needle):
    d = tiny["dir"]
    data = tiny["data"]
    extra = []
    if case == "nolabels":
        save_file({"x": tiny["x"]}, str(d / "nolabels.safetensors"))
        data = d / "nolabels.safetensors"
    elif case == "reg":
        extra = ["--reg", "err2"]
    elif case == "lam":
        extra = ["--lam", "-1"]
    elif case == "schedule":
        extra = ["--schedule", "step"]
    else:
        extra = ["--loss", "nowhere.mod:fn"]
    res = invoke("finetune", tiny["model"], "--data", data, *tiny["arch"], "--epochs", 1, *extra, "--out", d / "o.pt")
    assert res.exit_code == 2, (res.stdout, res.stderr)
    assert needle in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (d / "o.pt").exists()


def test_state_rms_and_the_scale_note(tiny):
    """h(0)'s RMS is measured on the validation data, and a kept checkpoint whose state shrank or grew
    past SCALE_NOTE_FACTOR gets a note: the tolerance atol + rtol·|h| then weighs it differently."""
    from dise_cli.finetuning import FinetuneResult, state_rms
    from dise_cli.output import Output
    from dise_cli.render import SCALE_NOTE_FACTOR, render_finetune
    from dise_cli.finetuning import FinetuneSettings
    from dise_cli.datasets import Dataset

    ode = read_model(tiny["module"], tiny["x"])
    data = Dataset(x=tiny["x"], y=None, t=None, name="x", sha256="")
    with torch.no_grad():
        expected = ode.encode(tiny["x"]).h0.double().pow(2).mean().sqrt().item()
    assert state_rms(ode, data, torch.device("cpu"), batch_size=7) == pytest.approx(expected, rel=1e-12)

    def result(growth, kept=1):
        val = lambda rms: {"accuracy": 0.9, "nfe_mean": 20.0, "state_rms": rms}  # noqa: E731
        history = [{"epoch": 0, "validation": val(1.0)},
                   {"epoch": 1, "loss": 1.0, "task_loss": 1.0, "reg": 0.0, "train_nfe": 20.0, "lr": 1e-3,
                    "validation": val(growth)}]
        return FinetuneResult(state={}, kept_epoch=kept, history=history)

    def notes(res):
        ui = Output(quiet=False, json_path=None)
        seen = []
        ui.note = seen.append
        report = render_finetune(ui, res, FinetuneSettings())
        return report, [n for n in seen if "RMS changed" in n]

    report, said = notes(result(0.01))
    assert report["state_rms_change"] == pytest.approx(0.01) and len(said) == 1 and "x0.01" in said[0]
    assert notes(result(SCALE_NOTE_FACTOR * 2))[1]
    assert not notes(result(1.5))[1]
    assert not notes(result(0.01, kept=0))[1]     # the starting model was kept: nothing changed


def test_a_model_that_solves_without_gradients_is_exit_2(tmp_path):
    """flow_matching's ODESolver.sample runs its solve under set_grad_enabled(False): there is nothing to
    fine-tune through, said in one line (not an autograd error), and nothing is written."""
    import families
    model = families.build_conditional_fm_sampler()
    x = families.make_noise(40)
    with torch.no_grad():
        y = model(x)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    save_file({"x": x, "y": y}, str(tmp_path / "d.safetensors"))
    res = invoke("finetune", tmp_path / "m.pt", "--arch", "families:build_conditional_fm_sampler", "--code-path", TESTS,
                 "--data", tmp_path / "d.safetensors", "--epochs", 1, "--out", tmp_path / "ft.pt")
    assert res.exit_code == 2 and "without gradients" in res.stderr, res.stderr
    assert not (tmp_path / "ft.pt").exists()
