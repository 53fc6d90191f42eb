"""Tables and lines for people show long lists shortened (first few, '...', the last, the count); the
JSON document beside them keeps every item."""
from __future__ import annotations

import json
from types import SimpleNamespace

import torch
from torch import nn

import tiny_models
from dise_cli.datasets import Dataset
from dise_cli.inspection import describe_model
from dise_cli.integrators import parse_candidates
from dise_cli.integrators.base import Status
from dise_cli.output import Output
from dise_cli.profiles import Profile
from dise_cli.profiling import ProfileRun
from dise_cli.reading import read_model
from dise_cli.render import render_inspect, render_profile, short_grid, short_list

CANDS = ["euler:steps=1", "rk4:steps=1", "dopri5:rtol=0.001,atol=0.001"]
GRID = torch.linspace(0, 1, 100).tolist()
MIDDLE = f"{GRID[50]:g}"          # a point that a shortened grid does not show
MAX_LINE = 200


def failing_profile(n_failed: int, n: int = 160) -> Profile:
    """``n`` samples on a 100-point grid; euler fails on the last ``n_failed`` (data rows 1000 + i)."""
    status = torch.zeros(n, 3, dtype=torch.uint8)
    status[n - n_failed:, 0] = int(Status.NON_FINITE)
    return Profile(candidates=CANDS, baseline=2, task="classification", t_span=GRID, index=torch.arange(n) + 1000,
                   nfe=torch.tensor([[1, 4, 26]] * n, dtype=torch.int32), status=status,
                   correct=torch.ones(n, 3, dtype=torch.bool), pred=torch.zeros(n, 3, dtype=torch.int64))


def printed_and_json(capsys, tmp_path, render, *args):
    path = tmp_path / "report.json"
    render(Output(json_path=str(path)), *args)
    text = capsys.readouterr().out
    assert text and all(len(line) <= MAX_LINE for line in text.splitlines()), text
    return text, json.loads(path.read_text())


def test_short_list_and_grid():
    assert short_grid(GRID) == "[0, 0.010101, 0.020202, ..., 1] (100 points)"
    assert short_grid([0.0, 0.5, 1.0]) == "[0, 0.5, 1]"
    assert short_grid([]) == "a grid per sample"
    assert short_list(list(range(50)), "rows") == "0, 1, 2, ..., 49 (50 rows)"
    assert short_list(list(range(50)), "rows", total=120) == "0, 1, 2, ..., 49 (first 50 of 120 rows)"
    assert short_list([7, 9], "rows") == "7, 9"


def test_profile_report_shortens_the_grid_and_the_failed_rows(capsys, tmp_path):
    run = ProfileRun(profile=failing_profile(50), timing=None)
    text, report = printed_and_json(capsys, tmp_path, render_profile, run)
    assert "t = [0, 0.010101, 0.020202, ..., 1] (100 points)" in text
    assert "50 failed solves (non_finite 50), data rows 1110, 1111, 1112, ..., 1159 (50 rows)" in text
    assert MIDDLE not in text and "1130" not in text
    assert report["t_span"] == GRID                                     # the JSON keeps every point
    assert report["candidates"][0]["failed_samples"] == list(range(1110, 1160))   # and every failed row


def test_every_failed_row_is_in_the_json_and_the_line_stays_short(capsys, tmp_path):
    text, report = printed_and_json(capsys, tmp_path, render_profile, ProfileRun(failing_profile(120), timing=None))
    assert report["candidates"][0]["failed_samples"] == list(range(1040, 1160))
    assert "data rows 1040, 1041, 1042, ..., 1159 (120 rows)" in text and "1100" not in text


def test_inspect_shortens_the_grid_of_the_model_and_of_each_solve(capsys, tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Linear(2, 4), tiny_models.ODEBlock(tiny_models.MLPFunc(4), t=GRID), nn.Linear(4, 3))
    x = torch.randn(8, 2)
    ode = read_model(module, x)
    candidates = parse_candidates(",".join(CANDS))
    opened = SimpleNamespace(model=ode, data=Dataset(x=x, y=None, t=None, name="data", sha256=""),
                             device=torch.device("cpu"), loaded=SimpleNamespace(note=""),
                             candidates=SimpleNamespace(own=None, integrators=candidates, baseline=2,
                                                        specs=[c.spec for c in candidates], notes=[]),
                             notes=[])
    info = describe_model(opened, None, {"programs": "split", "needs_arch": False, "note": ""}, repeats=1)
    text, report = printed_and_json(capsys, tmp_path, render_inspect, info)
    assert text.count("[0, 0.010101, 0.020202, ..., 1] (100 points)") == 2       # the t row and the routed solve
    assert MIDDLE not in text
    assert report["t_span"] == GRID and report["solves"][0]["t"] == GRID
    assert report["made_with"]["device"].startswith("cpu")


def test_candidates_sharing_a_method_are_named_in_full():
    from dise_cli.render import short_name
    specs = ["euler:steps=1", "rk4:steps=2", "rk4:steps=8", "dopri5:rtol=1e-05,atol=1e-05"]
    assert [short_name(s, specs) for s in specs] == ["euler", "rk4:steps=2", "rk4:steps=8", "dopri5"]


def test_a_long_grid_is_shown_by_its_ends_and_length_and_kept_whole_where_short():
    from dise_cli.render import short_name, shown
    edm = "heun2:grid=80/57.58598472124816/40.78557379650796/0.29644228447915727/0.002000000000000003"
    assert shown(edm) == "heun2:grid=80/57.59/.../0.002 (5 points)"
    assert shown("euler:grid=14.600001f/9.106813f/5.489746f/3.1812425f/0.029999997f") == \
        "euler:grid=14.6/9.107/.../0.03 (5 points)"
    assert shown("euler:grid=1/0.5/0") == "euler:grid=1/0.5/0" and shown("rk4:steps=2") == "rk4:steps=2"
    assert shown("heun2:grid=80/5.838947631011886/0.08508720268939021/0.002000000000000003") == \
        "heun2:grid=80/5.839/.../0.002 (4 points)"
    half = "heun2:grid=80/40.78557379650796/0.29644228447915727/0.002000000000000003"
    assert short_name(edm, [edm, half]) == shown(edm) and short_name(edm, [edm, "euler:steps=1"]) == "heun2"
