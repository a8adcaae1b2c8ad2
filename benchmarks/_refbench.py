"""What the benchmarks that run a reference implementation beside msakit share (one subprocess
per implementation, each in its own virtual environment): memory probes for the worker side,
the venv's interpreter, a worker's failure as a result row, and the machine's description.
Standard library only: the workers import it inside the references' venvs."""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from pathlib import Path


def rss_mb() -> float | None:
    """Current resident set size in MiB (Linux /proc), None elsewhere."""
    try:
        with open("/proc/self/statm") as f:
            pages = int(f.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def peak_mb() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def worker_error(r, keep: int) -> dict:
    """A failed worker (``subprocess.CompletedProcess``) as a result row: the tail of its
    output, and the signal when it was killed (e.g. by the out-of-memory killer)."""
    err = (r.stderr or r.stdout)[-keep:]
    if r.returncode < 0:
        err += f"\nkilled by signal {-r.returncode}"
    return {"error": err, "returncode": r.returncode}


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    mem = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": mem,
            "python": platform.python_version(), "os": platform.platform()}


def _mean(v: list[float]) -> float:
    return sum(v) / len(v)


def time_steps(fb, update, warmup: int, steps: int) -> dict:
    """Run ``warmup`` + ``steps`` training steps, ``fb(i)`` (zero grads, forward, loss,
    backward; returns the loss) then ``update()`` (the optimiser step); the wall and process
    CPU times of the timed steps, the process's peak memory after them and the resident size
    before the first one. A non-finite loss stops the run."""
    import torch

    base = rss_mb()
    steps_s, cpu, fbs, ups = [], [], [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        loss = fb(i)
        t1 = time.perf_counter()
        update()
        t2, c2 = time.perf_counter(), time.process_time()
        if not torch.isfinite(torch.as_tensor(loss)).all():
            raise RuntimeError(f"non-finite loss at step {i}")
        if i >= warmup:
            steps_s.append(t2 - t0)
            cpu.append(c2 - c0)
            fbs.append(t1 - t0)
            ups.append(t2 - t1)
    peak = peak_mb()
    return {"step_s": steps_s, "mean_step_s": _mean(steps_s), "min_step_s": min(steps_s),
            "mean_fb_s": _mean(fbs), "mean_update_s": _mean(ups), "cpu_s": cpu,
            "mean_cpu_s": _mean(cpu), "peak_rss_mb": peak, "base_rss_mb": base,
            "step_mem_mb": None if base is None else peak - base}


def time_inference(forward, batches: int, batch: int, warmup: int = 1) -> dict:
    """Time ``batches`` calls of ``forward()`` (no grad, after ``warmup`` untimed ones):
    samples per second at ``batch`` samples per call, and CPU seconds per call."""
    import torch

    wall, cpu = [], []
    with torch.no_grad():
        for i in range(warmup + batches):
            t0, c0 = time.perf_counter(), time.process_time()
            forward()
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
    return {"infer_s": wall, "infer_samples_per_s": batch / _mean(wall),
            "infer_cpu_s": _mean(cpu)}


def add_common_args(ap) -> None:
    """The options every same-run comparison takes (an ``argparse.ArgumentParser``)."""
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--markdown", action="store_true", help="also print a BENCHMARKS.md section")
    ap.add_argument("--render", type=Path, help="print the markdown of a saved result and exit")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps before the timed ones")


def engine_step(model, batch_of):
    """msakit's training step as its engine takes it, for timing: ``fb(i)`` = zero grads, the
    model's default training corruption (protocol seed ``i``) on ``batch_of(i)``,
    ``prepare_batch``, ``model.loss(...)["total"]``, backward, the config's clipping (by value
    or by norm, as Lightning's ``gradient_clip_*``). Returns ``(fb, optimizer)``, the engine's
    optimiser (``model.make_optimizer``: fused where torch has it)."""
    import torch

    from msakit.corrupt import parse_protocol

    cfg = model.config
    prot = parse_protocol(cfg.default_corrupt)
    opt = model.make_optimizer()
    params = [p for g in opt.param_groups for p in g["params"]]
    clip, mode = float(cfg.grad_clip or 0.0), cfg.grad_clip_mode

    def fb(i: int):
        opt.zero_grad(set_to_none=True)
        b = batch_of(i)
        b = model.prepare_batch(prot(b, seed=i) if prot is not None else b)
        loss = model.loss(model(b), b)["total"]
        loss.backward()
        if clip and mode == "value":
            torch.nn.utils.clip_grad_value_(params, clip)
        elif clip:
            torch.nn.utils.clip_grad_norm_(params, clip)
        return loss

    return fb, opt
