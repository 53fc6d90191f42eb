"""What dise makes of each model family: ``dise inspect`` and ``dise profile`` on the tiny models of
``tests/families.py`` (written as their public codebases write them), side by side.

    python benchmarks/model_families.py             # about two minutes on 2 CPU cores (torchdyn rows if installed)

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

import conditional_loops  # noqa: E402
import denoisers  # noqa: E402
import families  # noqa: E402
import tiny_models  # noqa: E402
import test_loops  # noqa: E402
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
    ("bare field, time per row only (rectified flow)", "build_rectified_flow_mlp",
     lambda: (families.build_rectified_flow_mlp(), {"x": families.make_noise(64)}), ["--t-span", "0,1"]),
    ("conditional sampler, labels in model_extras", "build_conditional_fm_sampler",
     lambda: (families.build_conditional_fm_sampler(), {"x": families.make_noise(64)}), []),
    ("sampler forward(noise, labels), labels read by f", "build_two_input_sampler",
     lambda: (families.build_two_input_sampler(), families.make_noise_and_labels(64)), ["--x-key", "noise,labels"]),
    ("sampler forward(noise, labels), labels move h(0)", "build_label_shifted_start",
     lambda: (families.build_label_shifted_start(), families.make_noise_and_labels(64)), ["--x-key", "noise,labels"]),
    ("sampler returning a dict, --output-key samples", "build_dict_output_sampler",
     lambda: (families.build_dict_output_sampler(), {"x": families.make_noise(64)}), ["--output-key", "samples"]),
    ("sampler returning uint8 images", "build_image_bytes_sampler",
     lambda: (families.build_image_bytes_sampler(), {"x": families.make_noise(64)}), []),
    ("k-diffusion likelihood, noise in the closure", "build_kdiffusion_likelihood",
     lambda: (families.build_kdiffusion_likelihood(), {"x": families.make_noise(32)}), []),
    ("FFJORD-style density, noise drawn by f", "build_ffjord_style_density",
     lambda: (families.build_ffjord_style_density(), {"x": families.make_noise(32, 3)}), []),
    ("Rubanova latent ODE, inputs on axis 1", "rubanova_latent_ode:classifier_last", lambda: rubanova(), []),
    ("SiT-style CFG, state cat([z, z]) (2xN rows)", "build_sit_style_sampler",
     lambda: (families.build_sit_style_sampler(), families.make_noise_and_labels(64)), ["--x-key", "noise,labels"]),
    ("CFG, labels cat([y, y_null]) read by f", "build_doubled_labels_sampler",
     lambda: (families.build_doubled_labels_sampler(), families.make_noise_and_labels(64)),
     ["--x-key", "noise,labels"]),
    ("sampler, f under bfloat16 autocast", "build_autocast_sampler",
     lambda: (families.build_autocast_sampler(), {"x": families.make_noise(64)}), []),
    ("rectified flow's Euler loop (no solver call)", "build_rectified_flow_sampler",
     lambda: (families.build_rectified_flow_sampler(), {"x": families.make_noise(64)}), []),
    ("ODE-Net block, its own classic RK4 loop", "build_classic_rk4_classifier",
     lambda: labelled(families.build_classic_rk4_classifier()), []),
    ("tolerances per tuple component (FFJORD's 1e20)", "tiny_models:build_per_component_tolerances",
     lambda: labelled(tiny_models.build_per_component_tolerances()), []),
    ("dopri5 with jump_t and step_t (f switches at 0.5)", "tiny_models:build_jump_at_half",
     lambda: labelled(tiny_models.build_jump_at_half()), []),
    ("Flux-style Euler loop, shifted schedule 1 -> 0", "build_shifted_schedule_sampler",
     lambda: (families.build_shifted_schedule_sampler(), {"x": families.make_noise(64)}), []),
    ("minRF-style loop z - dt*v, 1 -> 0", "build_noise_to_data_euler",
     lambda: (families.build_noise_to_data_euler(), {"x": families.make_noise(64)}), []),
    ("scheduler stepping sigmas, f at sigma*1000", "test_loops:build_scaled_time_loop",
     lambda: (test_loops.build_scaled_time_loop(), {"x": families.make_noise(64)}), []),
    ("REPA-style Heun, last step Euler, 1 -> 0", "test_loops:build_heun_last_euler",
     lambda: (test_loops.build_heun_last_euler(), {"x": families.make_noise(64)}), []),
    ("EDM edm_sampler (denoiser, 18 steps, float64)", "denoisers:build_edm_sampler_18",
     lambda: (denoisers.build_edm_sampler_18(), {"x": families.make_noise(64)}), []),
    ("k-diffusion sample_heun (denoiser, 5 sigmas)", "denoisers:build_k_heun",
     lambda: (denoisers.build_k_heun(), {"x": families.make_noise(64)}), []),
    ("k-diffusion sample_euler (denoiser, 8 sigmas)", "denoisers:build_k_euler",
     lambda: (denoisers.build_k_euler(), {"x": families.make_noise(64)}), []),
    ("EDM edm_sampler, class labels (a 2nd input)", "conditional_loops:build_conditional_edm",
     lambda: (conditional_loops.build_conditional_edm(), conditional_loops.labelled_noise(64, one_hot=True)),
     ["--x-key", "x,labels"]),
    ("rectified-flow loop model(z, t, y), 8 Euler", "conditional_loops:build_conditional_rectified_flow",
     lambda: (conditional_loops.build_conditional_rectified_flow(), conditional_loops.labelled_noise(64)),
     ["--x-key", "x,labels"]),
    ("the same, CFG by batch doubling, scale 2", "conditional_loops:build_guided_by_doubling",
     lambda: (conditional_loops.build_guided_by_doubling(), conditional_loops.labelled_noise(64)),
     ["--x-key", "x,labels"]),
    ("the same, CFG by two calls a step, scale 2", "conditional_loops:build_guided_by_two_calls",
     lambda: (conditional_loops.build_guided_by_two_calls(), conditional_loops.labelled_noise(64)),
     ["--x-key", "x,labels"]),
    ("REPA Euler, CFG 1.8 only where t <= 0.7, 10 steps", "conditional_loops:build_repa_guidance_interval",
     lambda: (conditional_loops.build_repa_guidance_interval(), conditional_loops.labelled_noise(64)),
     ["--x-key", "x,labels"]),
]


def labelled(model, n=64):
    """A classifier with its own predictions as labels, on 2-D inputs."""
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0)) * 2
    with torch.no_grad():
        return model, {"x": x, "y": model(x).argmax(-1)}


def rubanova():
    import rubanova_latent_ode as rub
    model = rub.classifier_last()
    x, t = rub.make_data(48)
    with torch.no_grad():
        out = model(x, t)
        model.classifier[-1].bias[1] -= (out[:, 1] - out[:, 0]).median() + 1e-4
        y = model(x, t).argmax(-1)
    return model, {"x": x, "y": y, "t": t}

TORCHDYN = [
    ("torchdyn NeuralODE in Sequential (tsit5)", "build_torchdyn_sequential",
     lambda: classifier(families.build_torchdyn_sequential, families.make_torchdyn_data), []),
    ("torchdyn NeuralODE, dopri5", "build_torchdyn_neuralode",
     lambda: (families.build_torchdyn_neuralode(), {"x": families.make_noise(64, 4)}), []),
    ("torchdyn Learner, rk4 on 10 points", "build_torchdyn_rk4",
     lambda: classifier(families.build_torchdyn_rk4, families.make_torchdyn_data), []),
]


def run(folder: Path, builder: str, setup, extra: list) -> tuple[dict, dict]:
    model, data = setup()
    torch.save(model.state_dict(), folder / "m.pt")
    save_file({k: v.contiguous() for k, v in data.items()}, str(folder / "d.safetensors"))
    arch = builder if ":" in builder else f"families:{builder}"
    args = [str(folder / "m.pt"), "--arch", arch, "--code-path", str(TESTS),
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
    only = sys.argv[1] if len(sys.argv) > 1 else None       # a part of the family names: those rows only
    rows = [r for r in FAMILIES if only is None or only in r[0]]
    try:
        import torchdyn  # noqa: F401
        rows = rows + [r for r in TORCHDYN if only is None or only in r[0]]
    except ImportError:
        print("(torchdyn is not installed: its rows are left out)")
    print(f"{'family':48} {'read by':9} {'split':10} {'own solver -> baseline':54} {'fidelity':19} {'export':9} "
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
        if info.get("per_sample_tensors"):
            read += "+ctx"
        print(f"{name:48} {read:9} {info['kind']:10} {own_text + ' -> ' + base:54} {fid_text:19} "
              f"{str(info['export']['programs']):9} {acc} / {row['nfe']['mean']:.1f}; {prof['oracle']['nfe_mean']:.2f}")


if __name__ == "__main__":
    main()
