"""Peak arithmetic rates that the benchmarks divide their achieved FLOP/s by, and the machine's load.

GPU peaks are data-sheet figures keyed by the exact name ``torch.cuda.get_device_name()`` reports:
variants of one chip differ by up to a quarter (H100 SXM 989, NVL 835, PCIe 756 TFLOP/s), so a
substring match would give every H100 the SXM figure. A name not listed gets no peak, and the
benchmarks print the fraction of peak as unknown instead of guessing. The CPU peak is measured in
the same run (a large matmul, same dtype and threads): shared cores and turbo clocks make any
data-sheet figure meaningless on the development machine.
"""

from __future__ import annotations

import os
import time

# Dense (no 2:4 sparsity) bf16 tensor-core peaks, TFLOP/s, with FP32 accumulate, from NVIDIA's data
# sheets (their "with sparsity" figures halved), keyed by torch.cuda.get_device_name().
DENSE_BF16_PEAK_TFLOPS: dict[str, float] = {
    "NVIDIA H100 80GB HBM3": 989.0,  # H100 SXM5
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA H200": 989.0,  # H200 SXM
    "NVIDIA H200 NVL": 835.0,
    "NVIDIA GH200 480GB": 989.0,  # its H100 runs at the SXM rate
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA L40S": 362.0,
    "NVIDIA L4": 121.0,
    "NVIDIA A10": 125.0,  # 72 SMs x 1,024 FLOP/clock x 1.695 GHz
    # The A10G is an AWS-only part with no NVIDIA data sheet. 70 is the figure quoted for it, and it is
    # what its GA102 gives at the half tensor rate that GeForce GA102 cards have with FP32 accumulate:
    # 80 SMs x 512 FLOP/clock x 1.71 GHz = 70.0 (the A10's 125 is the full rate).
    "NVIDIA A10G": 70.0,
}


def gpu_peak(device_name: str, override_tflops: float | None) -> tuple[float | None, str]:
    """Dense bf16 peak in FLOP/s (the override, else this exact name's entry, else None) and a line saying which."""
    if override_tflops is not None:
        line = f"dense bf16 peak {override_tflops:g} TFLOP/s (--peak-tflops), device {device_name!r}"
        return override_tflops * 1e12, line
    listed = DENSE_BF16_PEAK_TFLOPS.get(device_name)
    if listed is None:
        return None, (f"no dense bf16 peak listed for {device_name!r} (benchmarks/hardware.py matches exact names): "
                      f"fraction of peak unknown; pass --peak-tflops from the data sheet to get it")
    return listed * 1e12, f"dense bf16 peak {listed:g} TFLOP/s (benchmarks/hardware.py), device {device_name!r}"


def fraction_of_peak(flops_per_second: float, peak: float | None) -> str:
    return "unknown" if peak is None else f"{100 * flops_per_second / peak:.1f}%"


def cpu_matmul_peak(dtype_name: str, size: int, repeats: int = 5) -> float:
    """Best FLOP/s of a ``size``-cubed ``torch.matmul`` at torch's current thread count.

    The best of a few repeats, after one warm-up: the closest a shared machine gets to its
    physical limit for this dtype, measured next to the figures it is compared with.
    """
    import torch

    generator = torch.Generator().manual_seed(0)
    dtype = getattr(torch, dtype_name)
    a, b = (torch.randn(size, size, generator=generator, dtype=dtype) for _ in range(2))
    torch.matmul(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def load_average() -> str:
    """The 1/5/15-minute load averages: on shared cores every timing depends on them."""
    return "/".join(f"{x:.2f}" for x in os.getloadavg())
