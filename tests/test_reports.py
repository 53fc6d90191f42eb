"""Profile summaries against small hand-computed tables, and the profile file's own checks."""
from __future__ import annotations

import json

import pytest
import torch

from dise_cli.errors import InputError
from dise_cli.profiles import HEADER_KEY, Profile, read_profile, write_profile
from dise_cli.reports import oracle, summarize

CANDS = ["euler:steps=1", "rk4:steps=1", "dopri5:rtol=0.001,atol=0.001"]


def table_profile() -> Profile:
    # 4 samples x 3 candidates. Right answers:   euler rk4 dopri5
    correct = torch.tensor([[1, 1, 1],         # sample 0: euler suffices (NFE 1)
                            [0, 1, 1],         # sample 1: rk4 (NFE 4)
                            [0, 0, 1],         # sample 2: dopri5 (NFE 26)
                            [0, 0, 0]], dtype=torch.bool)   # sample 3: nobody -> baseline, wrong
    nfe = torch.tensor([[1, 4, 26], [1, 4, 20], [1, 4, 32], [1, 4, 26]], dtype=torch.int32)
    pred = torch.tensor([[0, 0, 0], [1, 2, 2], [0, 0, 3], [5, 5, 4]])
    return Profile(candidates=CANDS, baseline=2, task="classification", t_span=[0.0, 1.0], index=torch.arange(4),
                   nfe=nfe, status=torch.zeros(4, 3, dtype=torch.uint8), correct=correct, pred=pred)


def test_oracle_by_hand():
    orc = oracle(table_profile())
    assert orc["choice"].tolist() == [0, 1, 2, 2]
    assert orc["accuracy"] == 0.75
    assert orc["nfe_mean"] == (1 + 4 + 32 + 26) / 4
    assert orc["share"] == {CANDS[0]: 0.25, CANDS[1]: 0.25, CANDS[2]: 0.5}


def test_summary_by_hand():
    report = summarize(table_profile())
    acc = [r["accuracy"] for r in report["candidates"]]
    assert acc == [0.25, 0.5, 0.75]
    assert [r["agreement_with_baseline"] for r in report["candidates"]] == [0.25, 0.5, 1.0]
    assert report["candidates"][2]["nfe"] == {"mean": 26.0, "p50": 26.0, "p95": 31.1, "max": 32}
    assert report["best_single"]["candidate"] == CANDS[2]        # nobody else is within 0.3 pp


def test_failed_solves_never_count_as_right():
    p = table_profile()
    p.status[0, 0] = 2                                           # euler went non-finite on sample 0
    assert oracle(p)["choice"].tolist()[0] == 1
    assert summarize(p)["candidates"][0]["status"]["non_finite"] == 1


def test_regression_beta_and_best_single():
    gamma = torch.tensor([[0.5, 0.01, 0.02], [0.5, 0.5, 0.04], [float("inf"), 0.2, 0.0]], dtype=torch.float64)
    p = Profile(candidates=CANDS, baseline=2, task="regression", t_span=[0.0, 1.0], index=torch.arange(3),
                nfe=torch.tensor([[1, 4, 20]] * 3, dtype=torch.int32), status=torch.zeros(3, 3, dtype=torch.uint8),
                gamma=gamma, deviation=torch.zeros(3, 3, dtype=torch.float64))
    report = summarize(p)
    assert report["beta"] == pytest.approx(0.02)
    assert [r["accuracy"] for r in report["candidates"]] == pytest.approx([0.0, 1 / 3, 2 / 3], abs=1e-4)
    assert report["candidates"][0]["mean_error"] == 0.5         # the inf is a failure, not averaged
    assert report["oracle"]["nfe_mean"] == pytest.approx((4 + 20 + 20) / 3, abs=1e-4)


def test_profile_round_trip_and_damage(tmp_path):
    path = tmp_path / "p.safetensors"
    write_profile(table_profile(), path)
    back = read_profile(path)
    assert back.candidates == CANDS and torch.equal(back.correct, table_profile().correct)
    data = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match="not a readable safetensors file"):
        read_profile(tmp_path / "trunc.safetensors")
    from safetensors.torch import save_file
    save_file({"nfe": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="is not a dise profile"):
        read_profile(tmp_path / "other.safetensors")
    header = table_profile().header()
    header["format_version"] = 99
    save_file({"index": torch.arange(4)}, str(tmp_path / "new.safetensors"), metadata={HEADER_KEY: json.dumps(header)})
    with pytest.raises(InputError, match="format version 99"):
        read_profile(tmp_path / "new.safetensors")
    header["format_version"] = 1
    save_file({"index": torch.arange(4)}, str(tmp_path / "short.safetensors"), metadata={HEADER_KEY: json.dumps(header)})
    with pytest.raises(InputError, match="damaged or incomplete"):
        read_profile(tmp_path / "short.safetensors")
