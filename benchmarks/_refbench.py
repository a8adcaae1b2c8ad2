"""What the benchmarks that run a reference implementation beside msakit share (one subprocess
per implementation, each in its own virtual environment): the references (pinned repositories
and their venvs: ``REPOS``, ``VENVS``, ``ensure_venv``, ``fetch_source``), memory probes and
step timers for the worker side, the venv's interpreter, a worker's failure as a result row,
and the machine's description. Standard library only at import: the workers import it inside
the references' venvs."""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import subprocess
import sys
import tarfile
import time
from pathlib import Path

MMSA_VERSION = "2.2.1"
HME_TRANSFORMERS = "4.30.2"  # HME's README: "please keep the transformers==4.30.2"

# (GitHub repository, pinned commit): the sources the reference rows run
REPOS = {
    "lnln": ("Haoyu-ha/LNLN", "80a052c62b7b3b7a6cb6956846e9d9c121f56eda"),
    "hme": ("YetZzzzzz/HME", "6f0c9a7adeff47304a4a0337c366283c9a4bf221"),
    "mmsa": ("thuiar/MMSA", "a94e65d07fa1ae0d44e552390074b29b0898edfd"),  # master, for ALMT
    "dashfusion": ("ultramarineX/DashFusion", "37ba4177ba4be7db6ef2a8ae0ce916f2d6f99426"),
}
# per reference environment: venv name, pip install arguments, import probe
VENVS = {
    "lnln": ("ref-lnln", ["einops"], "import einops, yaml"),
    "hme": ("ref-hme-tf" + HME_TRANSFORMERS, ["einops", f"transformers=={HME_TRANSFORMERS}"],
            f"import einops, transformers; assert transformers.__version__ == '{HME_TRANSFORMERS}'"),
    "mmsa": ("ref-mmsa-" + MMSA_VERSION, [f"MMSA=={MMSA_VERSION}", "einops"],
             "import MMSA, einops"),
    # its requirements.txt pins; --no-deps: pytorch-metric-learning would pull torchvision
    "dashfusion": ("ref-dashfusion", ["--no-deps", "pytorch-metric-learning==0.9.99",
                                      "einops==0.7.0"],
                   "import pytorch_metric_learning, einops, sklearn"),
}


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


def parse_precisions(arg: str) -> list[str]:
    """``--precision 32,bf16-mixed`` (msakit train's values, ``engine.PRECISIONS``) as a list;
    exits naming the option when it holds anything else."""
    from msakit.train.engine import PRECISIONS

    out = [p.strip() for p in arg.split(",") if p.strip()]
    if not out or not set(out) <= set(PRECISIONS):
        raise SystemExit(f"--precision {arg!r}: expected some of {', '.join(PRECISIONS)}, "
                         f"comma-separated")
    return out


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


# ============================================================================ driver side
def cache_root() -> Path:
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("msakit")) / "bench"


def ensure_venv(kind: str, root: Path, venv: Path | None = None) -> Path:
    """The python of reference ``kind``'s venv, ``root / VENVS[kind][0]`` or ``venv`` (created
    once: --system-site-packages + its pip installs; what it lacks is installed); refuses one
    where pip replaced the installed torch."""
    import torch

    name, pip_args, probe = VENVS[kind]
    venv = venv or root / name
    py = venv_python(venv)
    check = probe + "; import torch; print(torch.__version__)"
    r = subprocess.run([str(py), "-c", check], capture_output=True, text=True) if py.exists() else None
    if r is None or r.returncode != 0:
        print(f"creating {venv}: pip install {' '.join(pip_args)} (once) ...", flush=True)
        venv.parent.mkdir(parents=True, exist_ok=True)
        if not py.exists():
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)],
                           check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", *pip_args], check=True)
        r = subprocess.run([str(py), "-c", check], capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"{kind}: the venv {venv} does not import:\n{r.stderr[-2000:]}")
    got = r.stdout.strip().splitlines()[-1]
    if got != torch.__version__:
        raise SystemExit(f"pip replaced torch in {venv} ({got}, expected the system's "
                         f"{torch.__version__}): delete the venv and install with --no-deps")
    return py


def venv_versions(py: Path) -> dict:
    code = ("import importlib.metadata as m, json; out = {}\n"
            "for p in ('torch', 'transformers', 'MMSA', 'einops', 'tokenizers'):\n"
            "    try: out[p] = m.version(p)\n"
            "    except Exception: pass\n"
            "print(json.dumps(out))")
    r = subprocess.run([str(py), "-c", code], capture_output=True, text=True)
    return json.loads(r.stdout) if r.returncode == 0 else {}


def find_git_dir(repo: str, given: dict[str, str], kind: str) -> Path | None:
    if kind in given:
        return Path(given[kind])
    root = Path(os.environ.get("MSAKIT_BENCH_MIRROR", "/work/.mirror"))
    for cand in (root / repo.replace("/", "+") / "repo", root / repo.replace("/", "+")):
        if (cand / "HEAD").is_file() or (cand / ".git").exists():
            return cand
    return None


def fetch_source(kind: str, dest: Path, given_git: dict[str, str], commits: dict[str, str],
                 paths: tuple[str, ...] = ()) -> tuple[Path, str]:
    """``git archive`` of the pinned commit of reference ``kind`` into ``dest``: from a local
    git dir (--git-dir, else $MSAKIT_BENCH_MIRROR or /work/.mirror), else a fresh clone."""
    repo, commit = REPOS[kind]
    commit = commits.get(kind, commit)
    gd = find_git_dir(repo, given_git, kind)
    if gd is None:
        gd = dest.parent / f"{kind}.git"
        if not gd.exists():
            print(f"cloning https://github.com/{repo} ...", flush=True)
            subprocess.run(["git", "clone", "--quiet", "--bare", f"https://github.com/{repo}",
                            str(gd)], check=True)
    git = ["git", f"--git-dir={gd}"]
    r = subprocess.run(git + ["rev-parse", "--verify", f"{commit}^{{commit}}"],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"{repo}: commit {commit} not in {gd} (update it, or pass "
                         f"--commit {kind}=HEAD)")
    full = r.stdout.strip()
    tar = subprocess.run(git + ["archive", "--format=tar", full, *paths], capture_output=True,
                         check=True).stdout
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        try:
            tf.extractall(dest, filter="data")
        except TypeError:  # Python without extraction filters
            tf.extractall(dest)
    return dest, full
