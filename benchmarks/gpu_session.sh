#!/usr/bin/env bash
# Everything issue 15 (and issue 14's GPU path) still has to measure on a GPU, in one run of at most
# about 8 minutes, for a session that is lent one (the device tool runs it in the repository root):
#
#     bash benchmarks/gpu_session.sh            # results under $OUT (or ./out), one log per step
#
# It installs nothing the CPU CI does not: torch with CUDA must already be there, and torchode for the
# comparison (pip install torchode). Each step has its own time limit, so one slow step cannot eat the
# others' time; a failed step is logged and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out}"
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

step() {   # step NAME SECONDS COMMAND...
    local name="$1" limit="$2"; shift 2
    local began=$SECONDS
    timeout "$limit" "$@" > "$out/$name.log" 2>&1
    echo "$name: exit $? in $((SECONDS - began)) s" | tee -a "$out/summary.txt"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$out/gpu.txt" 2>&1
python -c "import torch; print(torch.__version__, torch.version.cuda, torch.cuda.device_count())" >> "$out/gpu.txt"
# the CUDA tests (CI skips them): solver on CUDA, profile's peak memory, torchrun on two GPUs where there are two
step cuda_tests 120 python -m pytest -q -p no:logging tests/test_cuda.py
# per-sample DOPRI5 against torchode (target >= 1.0x) and the per-sample loop, MLP and MNIST
step profile_speed 150 python benchmarks/profile_speed.py --device cuda --repeats 5 --loop-samples 64
# routed bundle against DOPRI5-only at batch 1, 256 and 4096 (targets: >= 4x at 256, >= 1.2x RK4-only at 4096)
step dise_speed 120 python benchmarks/dise_speed.py --device cuda --repeats 5
# operations and syncs per step do not depend on the device; the compaction interval's cost does
step compaction 60 python benchmarks/compaction.py --device cuda --batch 4096
# torch.compile on the GPU, compile time included
step compile 120 python benchmarks/compile_probe.py --device cuda --unspec-ints
cat "$out/summary.txt"
