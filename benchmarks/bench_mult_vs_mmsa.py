"""Training-step time and peak memory: msakit's MulT against MMSA 2.2.1's MulT.

Both models get the same unaligned-MOSI-shaped batch (text 50x768, audio 375x5, vision 500x20,
batch 32, all steps observed) and the same step: zero grads, forward, L1 loss, backward, gradient
value clipping at 0.6 and an Adam step (MMSA's MulT trainer). Each runs in its own fresh
subprocess, so the peak resident memory figures are comparable: ``peak_rss`` is the process
peak (ru_maxrss), ``step_mem`` that peak minus the resident size just before the first step
(model, optimiser and data already built, libraries imported). Time is the mean over the timed
steps after warm-up steps, as wall time and as process CPU time (all threads). On a machine
shared with other jobs, wall times of multi-threaded runs suffer most (each parallel op waits
for a descheduled thread); ``--threads 1`` keeps the CPU times comparable.

MMSA runs in a virtual environment this script creates (``python -m venv
--system-site-packages``, then ``pip install MMSA==2.2.1``), so it reuses the installed torch;
the script refuses to measure if pip replaced torch in that venv. Usage::

    python benchmarks/bench_mult_vs_mmsa.py --out bench_mult.json --markdown
    python benchmarks/bench_mult_vs_mmsa.py --threads 1 --variant heads=2 --out b.json
    python benchmarks/bench_mult_vs_mmsa.py --render bench_mult.json   # markdown from a result

msakit's MulT is configured with MMSA's MOSI sizes (its defaults: d=50, 10 heads, 4 crossmodal
and 4 memory layers, Conv1d kernel 5); both parameter counts are reported. ``--variant``
adds rows with config overrides (``heads`` changes no parameter count).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _refbench import machine, peak_mb, rss_mb, venv_python, worker_error  # benchmarks/

SHAPES = {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}
MMSA_VERSION = "2.2.1"
CLIP_VALUE = 0.6  # MMSA's MulT trainer: clip_grad_value_(0.6)
LR = 2e-3


# ----------------------------------------------------------------------------- worker side
def _data(batch: int):
    import torch

    g = torch.Generator().manual_seed(0)
    x = {m: torch.randn(batch, L, D, generator=g) for m, (L, D) in SHAPES.items()}
    y = torch.empty(batch).uniform_(-3, 3, generator=g)
    return x, y


def _mmsa_model():
    from MMSA.config import get_config_regression
    from MMSA.models.singleTask.MULT import MULT

    args = get_config_regression("mult", "mosi")
    args.feature_dims = [SHAPES[m][1] for m in ("text", "audio", "vision")]
    args.train_mode = "regression"
    args.num_classes = 1
    return MULT(args), {k: args[k] for k in ("dst_feature_dim_nheads", "nlevels")}


def worker(
    impl: str, batch: int, warmup: int, steps: int, out: Path, sets: list[str], threads: int
) -> None:
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = _data(batch)
    if impl == "mmsa":
        import MMSA

        model, cfg = _mmsa_model()
        version = getattr(MMSA, "__version__", MMSA_VERSION)

        def loss_fn():
            out = model(x["text"], x["audio"], x["vision"])["M"]
            return torch.nn.functional.l1_loss(out, y.view(-1, 1))
    else:
        from msakit.data.batch import Batch
        from msakit.models import create_model

        overrides = dict(s.split("=", 1) for s in sets)
        model = create_model("mult", {m: D for m, (_, D) in SHAPES.items()}, **overrides)
        cfg = {k: getattr(model.config, k) for k in ("d", "heads", "layers", "mem_layers")}
        cfg["attn_dropout_mode"] = model.config.attn_dropout_mode
        version = "msakit"
        full = {m: torch.ones(batch, L, dtype=torch.bool) for m, (L, _) in SHAPES.items()}
        present = {m: torch.ones(batch, dtype=torch.bool) for m in SHAPES}
        b = Batch(x=x, mask=full, present=present, y=y, ids=[str(i) for i in range(batch)])

        def loss_fn():
            return model.loss(model(b), b)["total"]

    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=LR)
    base = rss_mb()
    times, cpu = [], []
    for i in range(warmup + steps):
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn()
        loss.backward()
        torch.nn.utils.clip_grad_value_(params, CLIP_VALUE)
        opt.step()
        dt_s, dc_s = time.perf_counter() - t0, time.process_time() - c0
        if i >= warmup:
            times.append(dt_s)
            cpu.append(dc_s)
        if not torch.isfinite(loss):
            raise RuntimeError(f"{impl}: non-finite loss at step {i}")
    peak = peak_mb()
    res = {
        "impl": impl,
        "version": version,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in params),
        "config": cfg,
        "step_s": times,
        "mean_step_s": sum(times) / len(times),
        "min_step_s": min(times),
        "cpu_s": cpu,
        "mean_cpu_s": sum(cpu) / len(cpu),
        "peak_rss_mb": peak,
        "base_rss_mb": base,
        "step_mem_mb": None if base is None else peak - base,
    }
    out.write_text(json.dumps(res))


# ----------------------------------------------------------------------------- driver side
def default_venv() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("msakit")) / "bench" / f"mmsa-{MMSA_VERSION}-venv"


def ensure_mmsa_venv(venv: Path) -> Path:
    """Create ``venv`` with MMSA installed beside the system torch; return its python."""
    py = venv_python(venv)
    probe = "import MMSA, torch; print(torch.__version__)"
    if py.exists():
        r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
        if r.returncode == 0:
            _check_torch(r.stdout.strip(), venv)
            return py
    print(f"creating {venv} and installing MMSA=={MMSA_VERSION} (once) ...", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", f"MMSA=={MMSA_VERSION}"], check=True
    )
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"MMSA does not import in {venv}:\n{r.stderr}")
    _check_torch(r.stdout.strip(), venv)
    return py


def _check_torch(venv_torch: str, venv: Path) -> None:
    import torch

    if venv_torch != torch.__version__:
        raise SystemExit(
            f"pip replaced torch in {venv} ({venv_torch}, expected the system's "
            f"{torch.__version__}): delete the venv and install MMSA with --no-deps"
        )


def run_worker(py: Path, impl: str, args: argparse.Namespace, steps: int, sets=()) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        cmd = [
            str(py),
            os.path.abspath(__file__),
            "--worker",
            impl,
            "--batch",
            str(args.batch),
            "--warmup",
            str(args.warmup),
            "--steps",
            str(steps),
            "--worker-out",
            str(out),
            "--threads",
            str(args.threads),
        ]
        for s in sets:
            cmd += ["--set", s]
        t0 = time.perf_counter()
        env = dict(os.environ)
        if args.threads > 0:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return {"impl": impl, **worker_error(r, 2000)}
        res = json.loads(out.read_text())
        res["wall_s"] = time.perf_counter() - t0
        return res


def ratios(mmsa: dict, ours: dict) -> dict:
    """MMSA's figure over ours for time (speed-ups), ours over MMSA's for memory (fractions)."""
    if "error" in mmsa or "error" in ours:
        return {}
    out = {
        "speedup_mean": mmsa["mean_step_s"] / ours["mean_step_s"],
        "speedup_min": mmsa["min_step_s"] / ours["min_step_s"],
        "cpu_speedup": mmsa["mean_cpu_s"] / ours["mean_cpu_s"],
        "peak_rss_fraction": ours["peak_rss_mb"] / mmsa["peak_rss_mb"],
    }
    if mmsa.get("step_mem_mb") and ours.get("step_mem_mb"):
        out["step_mem_fraction"] = ours["step_mem_mb"] / mmsa["step_mem_mb"]
    return out


def table(res: dict) -> str:
    rows = [
        "| run | params | heads | mean step (s) | min step (s) | CPU per step (s) | timed steps "
        "| peak RSS (MiB) | step memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in res["runs"].items():
        if "error" in r:
            last = (r["error"].strip().splitlines() or ["?"])[-1][:80]
            rows.append(f"| {key} | failed: {last} | | | | | | | |")
            continue
        cfg = r["config"]
        heads = cfg.get("heads", (cfg.get("dst_feature_dim_nheads") or [None, "?"])[1])
        mem = "n/a" if r["step_mem_mb"] is None else f"{r['step_mem_mb']:,.0f}"
        rows.append(
            f"| {key} | {r['params']:,} | {heads} | {r['mean_step_s']:.2f} | {r['min_step_s']:.2f} "
            f"| {r['mean_cpu_s']:.2f} | {len(r['step_s'])} | {r['peak_rss_mb']:,.0f} | {mem} |"
        )
    lines = ["\n".join(rows), ""]
    for key, rt in res.get("ratios", {}).items():
        parts = [
            f"{rt['speedup_mean']:.1f}x faster per step (mean; {rt['speedup_min']:.1f}x on the "
            f"fastest steps, {rt['cpu_speedup']:.1f}x in CPU time)",
            f"peak RSS {rt['peak_rss_fraction']:.1%} of MMSA's",
        ]
        if "step_mem_fraction" in rt:
            parts.append(f"step memory {rt['step_mem_fraction']:.1%} of MMSA's")
        lines.append(f"- {key} vs mmsa: " + ", ".join(parts))
    return "\n".join(lines)


def markdown(res: dict) -> str:
    m = res["machine"]
    load = res.get("loadavg", {})
    threads = sorted({r["threads"] for r in res["runs"].values() if "threads" in r})
    return "\n".join(
        [
            "## MulT training step: msakit vs MMSA 2.2.1",
            "",
            f"- Command: `{res['command']}`",
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB RAM, Python "
            f"{m['python']}, torch {res['torch']} (CPU, torch threads: {'/'.join(map(str, threads))})",
            f"- Date: {res['date']}",
            f"- Load average (1/5/15 min) before: {load.get('before')}, after: "
            f"{load.get('after')}; on a shared machine other jobs inflate wall times",
            f"- Workload: batch {res['batch']}, text 50x768, audio 375x5, vision 500x20 "
            "(unaligned MOSI shapes), every step observed; one training step = forward, L1 "
            "loss, backward, clip_grad_value 0.6, Adam. Each run in its own subprocess; step "
            "memory = peak RSS minus the RSS before the first step.",
            "",
            table(res),
            "",
        ]
    )


def summary_line(key: str, r: dict) -> str:
    if "error" in r:
        return f"{key}: FAILED"
    return (
        f"{key}: {r['params']:,} params, {r['mean_step_s']:.2f} s/step "
        f"({r['mean_cpu_s']:.2f} CPU s), peak RSS {r['peak_rss_mb']:,.0f} MiB"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="write the JSON results here")
    ap.add_argument("--markdown", action="store_true", help="also print a BENCHMARKS.md section")
    ap.add_argument("--render", type=Path, help="print the markdown of a saved result and exit")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5, help="timed steps for msakit")
    ap.add_argument("--mmsa-steps", type=int, default=2, help="timed steps for MMSA (~40 s each)")
    ap.add_argument(
        "--threads",
        type=int,
        default=0,
        help="torch threads per run (0: torch's default); 1 keeps CPU times comparable "
        "on a machine shared with other jobs",
    )
    ap.add_argument("--venv", type=Path, default=None, help="MMSA venv (default: user cache)")
    ap.add_argument("--skip-mmsa", action="store_true", help="measure msakit only")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="K=V[,K=V]",
        help="also time msakit's MulT with these config overrides (e.g. heads=2)",
    )
    ap.add_argument("--worker", choices=["mmsa", "msakit"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(
            args.worker,
            args.batch,
            args.warmup,
            args.steps,
            args.worker_out,
            args.set,
            args.threads,
        )
        return
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    for name in ("batch", "steps", "mmsa_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    variants = []
    for v in args.variant:
        sets = [kv.strip() for kv in v.split(",") if kv.strip()]
        if not sets or any("=" not in kv for kv in sets):
            raise SystemExit(f"--variant {v!r}: expected KEY=VALUE[,KEY=VALUE]")
        variants.append(sets)

    import torch

    res = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "batch": args.batch,
        "loadavg": {"before": [round(v, 2) for v in os.getloadavg()]},
        "runs": {},
    }
    todo: list[tuple[str, Path | None, str, int, list[str]]] = [
        ("msakit", Path(sys.executable), "msakit", args.steps, [])
    ]
    todo += [
        (f"msakit {','.join(v)}", Path(sys.executable), "msakit", args.steps, v) for v in variants
    ]
    if not args.skip_mmsa:
        todo.append(("mmsa", None, "mmsa", args.mmsa_steps, []))
    for key, py, impl, steps, sets in todo:
        py = py or ensure_mmsa_venv(args.venv or default_venv())
        res["runs"][key] = run_worker(py, impl, args, steps, sets)
        print(summary_line(key, res["runs"][key]), flush=True)
    res["loadavg"]["after"] = [round(v, 2) for v in os.getloadavg()]
    mmsa = res["runs"].get("mmsa")
    res["ratios"] = {}
    if mmsa is not None:
        for key, r in res["runs"].items():
            if key != "mmsa" and ratios(mmsa, r):
                res["ratios"][key] = ratios(mmsa, r)
    print()
    print(table(res))
    if args.markdown:
        print()
        print(markdown(res))
    if args.out:
        from msakit.fileio import write_json

        write_json(args.out, res)
    errors = [k for k, r in res["runs"].items() if "error" in r]
    if errors:
        for k in errors:
            print(f"\n{k} failed:\n{res['runs'][k]['error']}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
