"""Training-step time, inference throughput and peak memory of registered models on
MOSI-shaped input (text 50x768 as precomputed BERT-sized features, audio 375x5, vision 500x20).

Each model is measured in its own subprocess so peak RSS figures are comparable. Also the
FLOPs of one training step (forward, loss and backward; ``torch.utils.flop_counter``, with
torch's CPU flash-attention kernels counted like its GPU ones) and the share of the machine's
float32 matmul peak the step achieves: step FLOPs / median step time / peak, the peak being the
best of a few 2048x2048 matmuls timed by this script at the same thread count.

    python benchmarks/bench_models_speed.py --models lnln hme cyin mult late_fusion \
        --batch 32 --steps 5 --out bench_speed.json [--markdown]

A model may carry config overrides, ``NAME:KEY=VALUE,KEY=VALUE`` (e.g. ``hme:preset=paper``);
the batch size stays ``--batch`` for every row, so steps compare like for like.

``--precision 32,bf16-mixed`` measures each model in both: ``bf16-mixed`` runs forward and loss
under ``torch.autocast("cpu", dtype=torch.bfloat16)`` and backward after it, fp32 weights and
optimiser step (what ``msakit train --precision bf16-mixed`` does through Lightning); its share
of peak is taken against the bfloat16 matmul peak. Inference is timed in fp32 for every row
(msakit evaluates in fp32).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from datetime import date

SHAPES = {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}
DTYPE_NAMES = {"32": "float32", "bf16-mixed": "bfloat16"}  # the matmuls of each --precision


def make_batch(bs: int, seed: int = 0):
    import numpy as np

    from msakit.data.batch import SplitData, collate

    rng = np.random.default_rng(seed)
    x = {m: rng.normal(size=(bs, L, D)).astype("f4") for m, (L, D) in SHAPES.items()}
    lens = {m: rng.integers(L // 2, L + 1, bs) for m, (L, _) in SHAPES.items()}
    sd = SplitData(x, lens, rng.uniform(-3, 3, bs), [f"b{i}" for i in range(bs)])
    return collate(sd, np.arange(bs), trim=False)


def matmul_peak_gflops(threads: int, n: int = 2048, reps: int = 5, dtype=None) -> float:
    """Best GFLOP/s of an n x n matmul (float32, or ``dtype``) over ``reps`` runs (after a
    warm-up)."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def _flop_counter():
    """FlopCounterMode that also counts torch's CPU flash-attention kernels (torch counts only
    the GPU ones): the same formulas, 4*B*H*Lq*Lk*d forward and 2.5x that backward."""
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten

    def fwd(q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(q, k, v)

    def bwd(grad, q, k, v, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad, q, k, v)

    return fc.FlopCounterMode(display=False, custom_mapping={
        aten._scaled_dot_product_flash_attention_for_cpu: fwd,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: bwd,
    })


def parse_spec(spec: str) -> tuple[str, dict]:
    """``NAME[:KEY=VALUE,...]`` -> (name, overrides)."""
    name, _, rest = spec.partition(":")
    return name, dict(kv.split("=", 1) for kv in rest.split(",") if kv)


def measure(name: str, bs: int, steps: int, overrides: dict, threads: int,
            precision: str = "32") -> dict:
    import torch

    import msakit
    from msakit.corrupt import parse_protocol

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = make_batch(bs)
    model = msakit.create_model(name, {m: d for m, (_, d) in SHAPES.items()}, **overrides)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = model.make_optimizer()  # the engine's optimiser (fused where torch has it)
    prot = parse_protocol(model.config.default_corrupt)
    model.train()

    def step(update: bool = True):
        b = prot(batch, seed=0) if prot is not None else batch
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            out = model(b)
            loss = model.loss(out, b)["total"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if update:
            opt.step()

    step()  # warm-up
    counter = _flop_counter()
    with counter:
        step(update=False)
    times, cpu = [], []
    for _ in range(steps):
        t, c = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    model.eval()
    with torch.no_grad():
        model(batch)
        t = time.perf_counter()
        for _ in range(steps):
            model(batch)
        infer = (time.perf_counter() - t) / steps
    return {
        "model": name + "".join(f" {k}={v}" for k, v in overrides.items()),
        "precision": precision,
        "params": n_params,
        "train_step_s": sorted(times)[len(times) // 2],
        "train_step_s_all": times,
        "train_step_cpu_s": sorted(cpu)[len(cpu) // 2],
        "infer_samples_per_s": bs / infer,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "train_corruption": model.config.default_corrupt,
        "train_step_gflop": counter.get_total_flops() / 1e9,
        "msakit": msakit.__file__,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["lnln", "hme", "cyin", "mult", "late_fusion"])
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--out", default="bench_speed.json")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: CPU time is robust to other jobs)")
    ap.add_argument("--precision", default="32",
                    help="comma-separated: 32 and/or bf16-mixed (default %(default)s)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    from _refbench import parse_precisions  # benchmarks/

    precisions = parse_precisions(a.precision)
    if a.child:
        name, overrides = parse_spec(a.child)
        print(json.dumps(measure(name, a.batch, a.steps, overrides, a.threads, precisions[0])))
        return
    import torch

    peaks = {"32": matmul_peak_gflops(a.threads)}
    if "bf16-mixed" in precisions:
        peaks["bf16-mixed"] = matmul_peak_gflops(a.threads, dtype=torch.bfloat16)
    peak = peaks["32"]
    for k, v in peaks.items():
        print(f"{DTYPE_NAMES[k]} matmul peak ({a.threads} thread(s)): {v:.1f} GFLOP/s", flush=True)
    rows = []
    for m in a.models:
        for prec in precisions:
            p = subprocess.run(
                [sys.executable, __file__, "--child", m, "--batch", str(a.batch), "--steps",
                 str(a.steps), "--threads", str(a.threads), "--precision", prec],
                capture_output=True, text=True,
            )
            if p.returncode != 0:
                raise SystemExit(f"{m} ({prec}) failed:\n{p.stderr[-3000:]}")
            rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
            r = rows[-1]
            r["peak_share"] = r["train_step_gflop"] / r["train_step_s"] / peaks[prec]
            label = f"{r['model']} [{prec}]" if len(precisions) > 1 else m
            print(f"{label:12s} params {r['params']:>9,d}  step {r['train_step_s']:.3f} s "
                  f"(CPU {r['train_step_cpu_s']:.3f} s)  "
                  f"infer {r['infer_samples_per_s']:.0f}/s  peak {r['peak_rss_gb']:.2f} GB  "
                  f"{r['train_step_gflop']:.1f} GFLOP/step  {100 * r['peak_share']:.1f}% of peak",
                  flush=True)
    meta = {"date": str(date.today()), "machine": f"{platform.machine()} {platform.processor()}",
            "cpus": __import__("os").cpu_count(), "batch": a.batch, "steps": a.steps,
            "threads": a.threads, "load_avg": __import__("os").getloadavg(),
            "matmul_peak_gflops": peak, "matmul_peaks_gflops": peaks,
            "command": " ".join(sys.argv)}
    with open(a.out, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    if a.markdown:
        print("\nmatmul peak at " + f"{a.threads} thread(s): "
              + ", ".join(f"{DTYPE_NAMES[k]} {v:.1f} GFLOP/s" for k, v in peaks.items()))
        print("\n| model | precision | params | train step, wall (s) | train step, CPU (s) | inference (samples/s) | peak RSS (GB) "
              "| GFLOP / train step | share of matmul peak |")
        print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
        for r in rows:
            print(f"| {r['model']} | {r['precision']} | {r['params']:,} | {r['train_step_s']:.3f} | {r['train_step_cpu_s']:.3f} | "
                  f"{r['infer_samples_per_s']:.0f} | {r['peak_rss_gb']:.2f} | {r['train_step_gflop']:.1f} | "
                  f"{100 * r['peak_share']:.1f}% |")


if __name__ == "__main__":
    main()
