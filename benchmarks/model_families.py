"""What dise makes of each model family: ``dise inspect`` and ``dise profile`` on the tiny models of
``tests/families.py`` (written as their public codebases write them), side by side.

    python benchmarks/model_families.py             # about a minute on 2 CPU cores (torchdyn rows if installed)

Per family: how dise read the model, the model's own solver and dise's baseline for it (exactly or
the closest dise has), the fidelity check (largest difference / what the tolerance explains), what
export will do, and the profile's baseline accuracy (classifiers, labels = the model's own
predictions) and NFE against the oracle's.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import families  # noqa: E402
from dise_cli.cli import app  # noqa: E402


def classifier(build, make, n=64):
    model = build()
    x, y = make(n, model)
    return model, {"x": x, "y": y}


FAMILIES = [
    ("encoder, then odeint in the forward", "build_encoder_then_odeint",
     lambda: classifier(families.build_encoder_then_odeint, families.make_encoder_then_odeint_data), []),
    ("latent ODE (odeint's defaults)", "build_latent_ode",
     lambda: classifier(families.build_latent_ode, families.make_latent_ode_data, 48), []),
    ("ANODE, odeint_adjoint", "build_anode", lambda: classifier(families.build_anode, families.make_anode_data), []),
    ("CNF density, (z, log p), 10 -> 0", "build_cnf_density",
     lambda: (families.build_cnf_density(), {"x": families.make_circles(16)}), []),
    ("CNF density, per-row time", "build_cnf_row_time_density",
     lambda: (families.build_cnf_row_time_density(), {"x": families.make_circles(16)}), []),
    ("flow-matching sampler (lambda)", "build_fm_sampler",
     lambda: (families.build_fm_sampler(), {"x": families.make_noise(64)}), []),
    ("flow_matching ODESolver, midpoint", "build_fm_solver_sampler",
     lambda: (families.build_fm_solver_sampler(), {"x": families.make_noise(64)}), []),
    ("bare field v(x, t)", "build_fm_field", lambda: (families.build_fm_field(), {"x": families.make_noise(64)}),
     ["--t-span", "0,1"]),
    ("bare torchcfm field (vmap)", "build_torchcfm_field",
     lambda: (families.build_torchcfm_field(), {"x": families.make_noise(64)}), ["--t-span", "0,1"]),
    ("bare field, scalar time only", "build_scalar_time_field",
     lambda: (families.build_scalar_time_field(), {"x": families.make_noise(16)}), ["--t-span", "0,1"]),
]
TORCHDYN = [
    ("torchdyn NeuralODE in Sequential (tsit5)", "build_torchdyn_sequential",
     lambda: classifier(families.build_torchdyn_sequential, families.make_torchdyn_data), []),
    ("torchdyn NeuralODE, dopri5", "build_torchdyn_neuralode",
     lambda: (families.build_torchdyn_neuralode(), {"x": families.make_noise(64, 4)}), []),
]


def run(folder: Path, builder: str, setup, extra: list) -> tuple[dict, dict]:
    model, data = setup()
    torch.save(model.state_dict(), folder / "m.pt")
    save_file({k: v.contiguous() for k, v in data.items()}, str(folder / "d.safetensors"))
    args = [str(folder / "m.pt"), "--arch", f"families:{builder}", "--code-path", str(TESTS),
            "--data", str(folder / "d.safetensors"), *extra]
    runner = CliRunner()
    res = runner.invoke(app, ["inspect", *args, "--json", "-"])
    if res.exit_code:
        raise SystemExit(f"inspect failed: {res.stderr}")
    info = json.loads(res.stdout)
    res = runner.invoke(app, ["profile", *args, "--out", str(folder / "p.safetensors"), "--json", "-"])
    if res.exit_code:
        raise SystemExit(f"profile failed: {res.stderr}")
    return info, json.loads(res.stdout)


def main() -> None:
    rows = FAMILIES
    try:
        import torchdyn  # noqa: F401
        rows = rows + TORCHDYN
    except ImportError:
        print("(torchdyn is not installed: its rows are left out)")
    print(f"{'family':42} {'read by':9} {'split':10} {'own solver -> baseline':54} {'fidelity':19} {'export':9} "
          f"{'profile: baseline acc / NFE; oracle NFE'}")
    for name, builder, setup, extra in rows:
        with tempfile.TemporaryDirectory() as tmp:
            info, prof = run(Path(tmp), builder, setup, extra)
        own = info["own_solver"]
        own_text = "none seen" if own is None else f"{own['library']} {own['method']}"
        base = info["baseline"] + ("" if info["baseline_exact"] or own is None else " (closest)")
        fid = info["fidelity"]
        fid_text = "n/a (bare f)" if fid is None else f"{fid['difference']:.1e}/{fid['allowed']:.1e}"
        row = next(c for c in prof["candidates"] if c["candidate"] == prof["baseline"])
        acc = f"{100 * row['accuracy']:.0f}%" if prof["task"] == "classification" else "Γ"
        read = {"watching": "its call", "block": "attributes", "the": "is f"}[info["read_by"].split()[0]]
        print(f"{name:42} {read:9} {info['kind']:10} {own_text + ' -> ' + base:54} {fid_text:19} "
              f"{str(info['export']['programs']):9} {acc} / {row['nfe']['mean']:.1f}; {prof['oracle']['nfe_mean']:.2f}")


if __name__ == "__main__":
    main()
