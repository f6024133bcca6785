"""Costs of the CUDA emulator (docs/cuda.md, "The emulator"), on one OS thread:

    python benches/cuda_emulator.py

- a fiber switch: a 1-thread block looping on __syncthreads (each barrier is two switches,
  fiber -> scheduler -> fiber);
- a 256-thread block with 10 __syncthreads (per block, over a large grid);
- a thread of a kernel without barriers (axpy);
- a launch from Python (one block of one thread).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from ferrolm.backends.cuda.emulator import EmulatedModule

KERNELS = Path(__file__).resolve().parents[1] / "tests" / "cuda_kernels"


def best_of(fn, repeat: int = 5) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    os.environ["FERROLM_EMU_THREADS"] = "1"
    code = "".join(f'#line 1 "{f.name}"\n{f.read_text()}' for f in sorted(KERNELS.glob("*.cu")))
    mod = EmulatedModule(code, [KERNELS], name="emu_tests")
    loop = mod.get_function("barrier_loop")
    axpy = mod.get_function("axpy")

    iters = 200_000
    acc = np.zeros(1, np.float32)
    t = best_of(lambda: loop((1,), (1,), (np.int32(iters), acc, None)))
    print(f"fiber switch:                         {t / (4 * iters) * 1e9:7.1f} ns")

    blocks = 2000
    acc = np.zeros(blocks * 256, np.float32)
    t = best_of(lambda: loop((blocks,), (256,), (np.int32(5), acc, None)))
    print(f"256-thread block, 10 __syncthreads:   {t / blocks * 1e6:7.1f} us")
    t0 = best_of(lambda: loop((blocks,), (256,), (np.int32(0), acc, None)))
    print(f"256-thread block, no barrier:         {t0 / blocks * 1e6:7.1f} us")

    n = 1 << 21
    x, y = np.ones(n, np.float32), np.zeros(n, np.float32)
    t = best_of(lambda: axpy((n // 256,), (256,), (np.float32(2), x, y, np.int32(n))))
    print(f"thread of a kernel without barriers:  {t / n * 1e9:7.1f} ns")

    one = np.zeros(1, np.float32)
    t = best_of(lambda: [loop((1,), (1,), (np.int32(0), one, None)) for _ in range(1000)])
    print(f"launch from Python (1 thread):        {t / 1000 * 1e6:7.1f} us")


if __name__ == "__main__":
    main()
