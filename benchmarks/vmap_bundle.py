"""A vmapped f from a bundle against the same f in memory: torchcfm's wrapper needs a 0-dim t, so dise
gives each row its own by ``torch.func.vmap``, in memory over the user's module and in a bundle over
the exported program. DOPRI5 over the same 256 states, side by side in one run (the same NFE and
states, checked; the ratio is the bundle's price for running programs). Target: at most 1.5x.

    python benchmarks/vmap_bundle.py [--batch 256] [--repeats 9]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TESTS = REPO_ROOT / "tests"
for path in (REPO_ROOT, TESTS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

import dise_cli  # noqa: E402
import families  # noqa: E402
from dise_cli.cli import app  # noqa: E402
from dise_cli.clock import alternating_medians  # noqa: E402
from dise_cli.integrators import Dopri5  # noqa: E402
from dise_cli.reading import read_model  # noqa: E402


def bundle_of(folder: Path) -> Path:
    model = families.build_torchcfm_field()
    torch.save(model.state_dict(), folder / "m.pt")
    save_file({"x": families.make_noise(64)}, str(folder / "d.safetensors"))
    common = [str(folder / "m.pt"), "--arch", "families:build_torchcfm_field", "--code-path", str(TESTS),
              "--t-span", "0,1"]
    for args in (["profile", *common, "--data", str(folder / "d.safetensors"), "--out", str(folder / "p.sft")],
                 ["train-selector", *common, "--data", str(folder / "d.safetensors"), "--profile",
                  str(folder / "p.sft"), "--epochs", "2", "--out", str(folder / "s.sft")],
                 ["export", *common, "--selector", str(folder / "s.sft"), "--out", str(folder / "b.dise")]):
        res = CliRunner().invoke(app, args)
        if res.exit_code:
            raise SystemExit(f"{args[0]} failed: {res.stderr}")
    return folder / "b.dise"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = dise_cli.load(bundle_of(Path(tmp)))
    memory = read_model(families.build_torchcfm_field(), families.make_noise(8),
                        t_span=torch.tensor([0.0, 1.0], dtype=torch.float64))
    x = families.make_noise(args.batch, seed=1)
    t = torch.tensor([0.0, 1.0], dtype=torch.float64)
    solver = Dopri5(rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        sols = {name: solver.solve(ode.field, x, t) for name, ode in (("bundle", bundle.ode), ("memory", memory))}
        same = torch.equal(sols["bundle"].nfe, sols["memory"].nfe)
        medians = alternating_medians({name: (lambda ode=ode: solver.solve(ode.field, x, t))
                                       for name, ode in (("bundle", bundle.ode), ("memory", memory))},
                                      args.repeats, torch.device("cpu"))
    print(f"batch {args.batch}, DOPRI5 at 1e-4, median of {args.repeats}: bundle {1e3 * medians['bundle']:.1f} ms, "
          f"memory {1e3 * medians['memory']:.1f} ms, bundle / memory {medians['bundle'] / medians['memory']:.2f}x "
          f"(target <= 1.5x); same NFE: {same}")


if __name__ == "__main__":
    main()
