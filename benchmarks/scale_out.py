"""Profiling on several processes: `dise profile` on the MNIST sample with 1, 2 (and 4, ...) torchrun
processes, side by side in one run, as speed-up over one process.

    python benchmarks/scale_out.py                               # CPU: 1 and 2 processes, 1024 samples
    python benchmarks/scale_out.py --device cuda --procs 1,2,4,8 --samples 10000

Each configuration runs the same command (`torchrun --standalone --nproc-per-node N -m dise_cli profile
sample_models/mnist_odenet/dise.yaml`) on the sample's test digits, tiled to --samples rows; the
configurations alternate within each round (--rounds) so that all see the same machine load, and the
median wall-clock seconds of the whole command (start-up, reading and checking the model, profiling,
merging, writing) is reported. On CPU each process gets cores / N threads (OMP_NUM_THREADS), so every
configuration has the machine's cores: the figure says what splitting the samples among processes
gives over one process's own threads, not what a second machine would give. On GPUs each process has
its own GPU. The profiles are checked against the one-process profile: the NFE and statuses must be
equal in every configuration (outputs may differ in round-off where the thread count differs).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

from dise_cli.profiles import read_profile  # noqa: E402

SAMPLE = REPO_ROOT / "sample_models" / "mnist_odenet"


def tiled_data(samples: int, folder: Path) -> Path:
    """The test digits repeated up to ``samples`` rows (a larger dataset of the same kind)."""
    data = load_file(str(SAMPLE / "test.safetensors"))
    rows = torch.arange(samples) % len(data["x"])
    path = folder / f"mnist_{samples}.safetensors"
    save_file({"x": data["x"][rows].contiguous(), "y": data["y"][rows].contiguous()}, str(path))
    return path


def command(procs: int, data: Path, out: Path, device: str, batch: int) -> list[str]:
    dise = ["-m", "dise_cli", "profile", str(SAMPLE / "dise.yaml"), "--data", str(data), "--device", device,
            "--batch-size", str(batch), "--out", str(out), "--quiet"]
    if procs == 1:
        return [sys.executable, *dise]
    return [shutil.which("torchrun") or "torchrun", "--standalone", "--nproc-per-node", str(procs), *dise]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="process counts to compare, comma-separated (1 first)")
    parser.add_argument("--samples", type=int, default=1024, help="rows of data (the test digits tiled)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    procs = [int(p) for p in args.procs.split(",")]
    cores = os.cpu_count() or 1
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    times: dict[int, list[float]] = {n: [] for n in procs}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        data = tiled_data(args.samples, folder)
        for _ in range(args.rounds):
            for n in procs:
                run_env = dict(env, OMP_NUM_THREADS=str(max(1, cores // n))) if args.device == "cpu" else env
                began = time.perf_counter()
                done = subprocess.run(command(n, data, folder / f"p{n}.st", args.device, args.batch_size),
                                      env=run_env, capture_output=True, text=True)
                if done.returncode != 0:
                    sys.exit(f"{n} processes failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
                times[n].append(time.perf_counter() - began)
        one = read_profile(folder / f"p{procs[0]}.st")
        same = {n: bool(torch.equal(read_profile(folder / f"p{n}.st").nfe, one.nfe)
                        and torch.equal(read_profile(folder / f"p{n}.st").status, one.status)) for n in procs}
    base = statistics.median(times[procs[0]])
    print(f"dise profile on {SAMPLE.name}, {args.samples} samples, batch {args.batch_size}, device {args.device} "
          f"({cores} CPU cores), median of {args.rounds} rounds, whole command")
    print(f"{'processes':>10}{'threads each':>14}{'seconds':>10}{'speed-up':>10}{'ideal':>7}{'NFE equal':>11}")
    for n in procs:
        median = statistics.median(times[n])
        threads = max(1, cores // n) if args.device == "cpu" else "-"
        print(f"{n:>10}{threads!s:>14}{median:>10.2f}{base / median:>10.2f}{n / procs[0]:>7.1f}"
              f"{'yes' if same[n] else 'NO':>11}")


if __name__ == "__main__":
    main()
