#!/usr/bin/env bash
# The CUDA backend on a machine with an NVIDIA GPU, in one go (about 10 minutes): installs
# ferrolm with cupy into a fresh virtualenv, runs the GPU tests (the `gpu` marker: the same
# end-to-end and kernel tests CI runs on the emulator) and `ferrolm bench --device cuda`, and
# writes everything to a results folder.
#
#   bash benches/gpu_check.sh [OUT]        (default OUT: ./gpu-results)
#
# Needs python3 (3.10+), a Rust toolchain to build the wheel (or a wheel already in dist/), and
# the NVIDIA driver. CUDA 12 wheels by default; CUDA=13 for cupy-cuda13x.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=$(mkdir -p "${1:-gpu-results}" && cd "${1:-gpu-results}" && pwd)
cuda=${CUDA:-12}
venv=${VENV:-$root/.venv-gpu}
log() { echo "== $*" | tee -a "$out/steps.log"; }

log "machine"
{ nvidia-smi || echo "nvidia-smi: not found"; } > "$out/nvidia-smi.txt" 2>&1
python3 -m venv "$venv"
py="$venv/bin/python"
"$py" -m pip install -q --upgrade pip
log "install (cupy-cuda${cuda}x, NVRTC and headers, test tools)"
"$py" -m pip install -q "maturin>=1.5,<2" "pytest>=7" "gguf>=0.10" "cupy-cuda${cuda}x>=13" \
    "nvidia-cuda-nvrtc-cu${cuda}" "nvidia-cuda-runtime-cu${cuda}"
if ! ls "$root"/dist/ferrolm-*.whl >/dev/null 2>&1; then
    log "build wheel"
    (cd "$root" && "$venv/bin/maturin" build --release --out "$root/dist")
fi
"$py" -m pip install -q --force-reinstall --no-deps "$root"/dist/ferrolm-*.whl
"$py" -m pip install -q "$root"/dist/ferrolm-*.whl
"$py" -c "import cupy; print(cupy.cuda.runtime.getDeviceProperties(0)['name'].decode())" | tee "$out/device.txt"

log "GPU tests"
(cd "$root/tests" && timeout 300 "$py" -m pytest -q -p no:cacheprovider -m gpu -rs \
    test_cuda_backend.py test_cuda_kernels.py test_cuda_serving.py 2>&1 | tee "$out/pytest-gpu.txt") || echo "GPU tests: failures (see pytest-gpu.txt)" | tee -a "$out/steps.log"

log "benchmark"
timeout 420 "$py" -m ferrolm.bench --device cuda --runs 3 --new-tokens 128 --no-progress --out "$out" \
    2>&1 | tee "$out/bench.txt" || echo "benchmark: failed or timed out (see bench.txt)" | tee -a "$out/steps.log"
log "done: $out"
