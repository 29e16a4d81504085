"""Device-side measuring helpers of the benchmarks: synchronisation, timed step loops, GPU utilisation
sampling, FLOP counting, a reference matmul rate and a torch.profiler summary."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import nullcontext
from typing import Any

import numpy as np


def is_cuda(device: Any) -> bool:
    return str(getattr(device, "type", device)).startswith("cuda")


def sync(device: Any) -> None:
    import torch

    if is_cuda(device):
        torch.cuda.synchronize()


class GpuUtilSampler:
    """Samples GPU utilisation (%) every ``interval`` s in a thread: ``torch.cuda.utilization()`` (pynvml),
    else ``nvidia-smi``."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval, self.samples = interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def read() -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization())
        except Exception:  # pynvml missing or unsupported
            pass
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                capture_output=True,
                text=True,
                timeout=5,
                check=True,
            ).stdout
            return float(out.split()[0])
        except (OSError, subprocess.SubprocessError, ValueError, IndexError):
            return None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            value = self.read()
            if value is not None:
                self.samples.append(value)

    def __enter__(self) -> GpuUtilSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return round(float(np.mean(self.samples)), 1) if self.samples else None


def step_flops(model: Any, x: Any, y: Any, loss_fn: Any, autocast: Any) -> int:
    """FLOPs of one forward + backward (FlopCounterMode; convolutions and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        with autocast():
            logits = model(x)
        loss_fn(logits.float(), y).backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def matmul_rate(device: Any) -> dict[str, Any]:
    """Measured dense matmul rate: bf16 8192^3 on CUDA, fp32 1024^3 on the CPU (FLOP/s)."""
    import torch

    cuda = is_cuda(device)
    n, dtype, iters = (8192, torch.bfloat16, 20) if cuda else (1024, torch.float32, 20)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        a @ b
    sync(device)
    rate = 2 * n**3 * iters / (time.perf_counter() - t0)
    return {"what": f"{str(dtype).replace('torch.', '')} matmul {n}^3", "flops_per_s": rate}


def profile_summary(step: Callable[[], Any], device: Any, n: int = 5, rows: int = 12) -> dict[str, Any]:
    """torch.profiler over ``n`` calls of ``step()``: the top ops by self time (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = is_cuda(device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(n):
            step()
        sync(device)
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)
    total = sum(getattr(e, key) for e in events) or 1.0
    top = [
        {
            "op": e.key,
            "calls": e.count,
            "self_ms": round(getattr(e, key) / 1000.0 / n, 2),
            "share": round(getattr(e, key) / total, 3),
        }
        for e in events[:rows]
    ]
    return {"sorted_by": key, "top": top}


def timed_steps(step: Callable[[], int], warmup: int, steps: int, device: Any) -> dict[str, Any]:
    """``warmup`` untimed then ``steps`` timed calls of ``step()`` (which returns its image count):
    images/s over the timed span (synchronised on CUDA at both ends), median step time, GPU utilisation."""
    for _ in range(warmup):
        step()
    sync(device)
    times, images = [], 0
    with GpuUtilSampler() if is_cuda(device) else nullcontext() as util:
        t_start = time.perf_counter()
        for _ in range(steps):
            t0 = time.perf_counter()
            images += step()
            times.append(time.perf_counter() - t0)
        sync(device)
        elapsed = time.perf_counter() - t_start
    return {
        "images_per_s": round(images / elapsed, 2),
        "step_ms_p50": round(1000 * float(np.median(times)), 1),
        "steps": steps,
        "gpu_util_mean": util.mean if util is not None else None,
    }
