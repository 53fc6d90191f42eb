"""The --plot figures: each report drawn as a valid PNG and SVG, the same bytes for the same report,
no half file on failure, and one-line errors for a bad extension or a missing matplotlib."""
from __future__ import annotations

import struct
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

import tiny_models
from dise_cli import plots
from dise_cli.calibration import calibrate, evaluate_point
from dise_cli.costs import cost_labels
from dise_cli.datasets import Dataset
from dise_cli.errors import UsageError
from dise_cli.evaluation import Gates, evaluate_routed
from dise_cli.integrators import parse_candidates
from dise_cli.profiles import Profile
from dise_cli.profiling import ProfileRun, Timing
from dise_cli.reading import read_model
from dise_cli.routing import RoutedModel
from dise_cli.selector import Selector, SelectorNet, SelectorSpec
from dise_cli.selector_training import TrainSettings, _Describer, _report

CANDS = ["euler:steps=1", "rk4:steps=1", "dopri5:rtol=0.001,atol=0.001"]
N = 300


@pytest.fixture
def mpl():
    return pytest.importorskip("matplotlib")


def made_up_profile(task: str = "classification") -> Profile:
    """N samples, three candidates: euler (1 NFE) often wrong, rk4 (4) rarely, dopri5 (20 to 38) right."""
    gen = torch.Generator().manual_seed(0)
    dopri = 20 + 6 * torch.multinomial(torch.tensor([0.1, 0.7, 0.15, 0.05]), N, replacement=True, generator=gen)
    nfe = torch.stack([torch.ones(N, dtype=torch.int64), torch.full((N,), 4), dopri], 1).to(torch.int32)
    status = torch.zeros(N, 3, dtype=torch.uint8)
    status[5, 0] = 2                                       # one euler solve went non-finite
    hard = torch.rand(N, generator=gen)
    profile = Profile(candidates=CANDS, baseline=2, task=task, t_span=[0.0, 1.0], index=torch.arange(N),
                      nfe=nfe, status=status)
    if task == "classification":
        profile.correct = torch.stack([hard < 0.8, hard < 0.97, hard < 0.98], 1)
        profile.pred = torch.zeros(N, 3, dtype=torch.int64)
    else:
        profile.gamma = torch.stack([hard * 0.5, hard * 0.03, hard * 0.01], 1).double()
        profile.deviation = torch.zeros(N, 3, dtype=torch.float64)
    return profile


def training_report(profile: Profile) -> dict:
    """train-selector's report, from a selector whose predicted costs are the labels plus noise."""
    labels = cost_labels(profile)
    val = torch.arange(N // 2, N)
    pred = labels.costs[val] + 0.3 * torch.randn(len(val), 3, generator=torch.Generator().manual_seed(1))
    right, nfe = labels.right[val], profile.nfe[val]
    chosen, curve = calibrate(pred, right, nfe, profile.baseline, selector_nfe=0.2, max_drop_pp=1.0)
    raw = evaluate_point(pred.double(), right, nfe.double(), torch.zeros(3, dtype=torch.float64), 0.2)
    spec = SelectorSpec.for_shape((4,), 3, "auto", "h0")
    return _report(profile.subset(val), labels, TrainSettings(max_accuracy_drop=1.0), chosen, raw, curve, 0.2,
                   [0.5, 0.4], n_train=N // 2, selector_spec=spec, n_params=123,
                   describe=_Describer(profile.subset(val), pred, 0.2, labels.beta))


@pytest.fixture(scope="module")
def evaluation_report() -> dict:
    """evaluate's report of the tiny classifier routed by an untrained selector (a real run, ~0.2 s)."""
    module = tiny_models.build_classifier()
    x = torch.randn(64, 2, generator=torch.Generator().manual_seed(3)) * 2
    with torch.no_grad():
        y = module(x).argmax(1)
    y[:4] = (y[:4] + 1) % 3
    ode = read_model(module, x)
    torch.manual_seed(0)
    net = SelectorNet(SelectorSpec.for_shape((4,), 3, "auto", "h0"))
    selector = Selector(net=net, candidates=[c.spec for c in parse_candidates(",".join(CANDS))], offsets=[0.0] * 3,
                        meta={"task": "classification", "baseline": 2})
    data = Dataset(x=x, y=y, t=None, name="data", sha256="")
    return evaluate_routed(RoutedModel(ode, selector).eval(), data, rows=torch.arange(len(x)), batch_size=32,
                           batch_sizes=[1, 8, 32], device=torch.device("cpu"), gates=Gates(), repeats=1)


def assert_png(path: Path) -> None:
    import matplotlib.image
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 0 and height > 0
    assert matplotlib.image.imread(path).shape[:2] == (height, width)


def assert_svg(path: Path) -> None:
    root = ET.parse(path).getroot()
    assert root.tag in ("svg", "{http://www.w3.org/2000/svg}svg")
    assert b"<dc:date>" not in path.read_bytes()           # no date: the same report gives the same file


def assert_image(path: Path) -> None:
    (assert_png if path.suffix == ".png" else assert_svg)(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]      # no temporary file left behind


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_profile_figure(tmp_path, mpl, ext):
    profile = made_up_profile()
    run = ProfileRun(profile=profile, timing=Timing(seconds=[0.1, 0.2, 1.0], nfe_total=[int(v) for v in profile.nfe.sum(0)],
                                                    peak_memory_bytes=[None] * 3, n_samples=N))
    assert plots.plot_profile(run, tmp_path / f"p.{ext}") == tmp_path / f"p.{ext}"
    assert_image(tmp_path / f"p.{ext}")


def test_regression_profile_figure(tmp_path, mpl):
    plots.plot_profile(made_up_profile("regression"), tmp_path / "r.svg")       # a Profile alone will do
    assert_image(tmp_path / "r.svg")


@pytest.mark.parametrize("ext", ["png", "svg"])
def test_evaluation_figure(tmp_path, mpl, evaluation_report, ext):
    plots.plot_evaluation(evaluation_report, tmp_path / f"e.{ext}")
    assert_image(tmp_path / f"e.{ext}")


@pytest.mark.parametrize("ext", ["png", "SVG"])
def test_training_figure_same_report_same_bytes(tmp_path, mpl, ext):
    report = training_report(made_up_profile())
    assert len(report["tradeoff"]) >= 2
    plots.plot_training(report, tmp_path / f"t.{ext}")
    assert_image(tmp_path / f"t.{ext}")
    again = tmp_path / "again" / f"t.{ext}"
    again.parent.mkdir()
    plots.plot_training(report, again)
    assert again.read_bytes() == (tmp_path / f"t.{ext}").read_bytes()


def test_failed_write_leaves_the_old_file_whole(tmp_path, mpl, monkeypatch):
    from matplotlib.figure import Figure
    target = tmp_path / "t.png"
    target.write_bytes(b"old")

    def half_then_fail(self, fname, **kwargs):
        Path(fname).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        plots.plot_training(training_report(made_up_profile()), target)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["t.png"]


@pytest.mark.parametrize("name", ["out.pdf", "out.jpg", "out", "out.png.txt"])
def test_other_extensions_are_usage_errors_naming_the_flag(tmp_path, name):
    with pytest.raises(UsageError, match=r"^--plot: .*valid: \.png, \.svg$"):
        plots.check_plot_path(tmp_path / name)
    with pytest.raises(UsageError, match="^--figure: "):
        plots.plot_format(tmp_path / name, flag="--figure")


def test_check_plot_path_before_any_work(tmp_path, mpl):
    assert plots.check_plot_path(tmp_path / "fig.PNG") == tmp_path / "fig.PNG"
    with pytest.raises(UsageError, match="^--plot: folder .* does not exist"):
        plots.check_plot_path(tmp_path / "missing" / "fig.svg")


def test_without_matplotlib_a_one_line_usage_error(tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)          # import matplotlib now raises ImportError
    for call in (plots.require_matplotlib, lambda: plots.check_plot_path(tmp_path / "fig.png"),
                 lambda: plots.plot_training({}, tmp_path / "fig.svg")):
        with pytest.raises(UsageError, match=r"^--plot: needs matplotlib.*pip install -e '\.\[plot\]'") as info:
            call()
        assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())


def test_the_commands_draw_their_plots(tiny, mpl):
    """--plot through the CLI: profile, train-selector and evaluate each write a valid image, and a bad
    extension is exit 2 before any work."""
    from typer.testing import CliRunner
    from dise_cli.cli import app

    d, runner = tiny["dir"], CliRunner()

    def invoke(*args):
        res = runner.invoke(app, [str(a) for a in args])
        assert res.exit_code == 0, res.stderr
        return res

    common = [tiny["model"], "--data", tiny["data"], *tiny["arch"]]
    plots_dir = d / "plots"
    plots_dir.mkdir()
    invoke("profile", *common, "--out", d / "p.safetensors", "--plot", plots_dir / "profile.png")
    invoke("train-selector", *common, "--profile", d / "p.safetensors", "--epochs", 2, "--val-split", 0.5,
           "--out", d / "s.safetensors", "--plot", plots_dir / "training.svg")
    invoke("export", tiny["model"], *tiny["arch"], "--selector", d / "s.safetensors", "--out", d / "m.dise")
    invoke("evaluate", d / "m.dise", "--data", tiny["data"], *tiny["arch"][2:], "--batch-sizes", "4,8",
           "--repeats", 1, "--plot", plots_dir / "evaluation.png")
    for name in ("profile.png", "training.svg", "evaluation.png"):
        (assert_png if name.endswith(".png") else assert_svg)(plots_dir / name)
    res = runner.invoke(app, ["profile", *map(str, common), "--out", str(d / "q.safetensors"), "--plot", "p.pdf"])
    assert res.exit_code == 2 and res.stderr.startswith("error: --plot") and not (d / "q.safetensors").exists()
