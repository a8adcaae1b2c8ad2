"""Training step, inference throughput and memory: msakit's MulT, TFN, LMF, MISA, Self-MM and
ALMT against MMSA's (2.2.1 from PyPI; ALMT from MMSA's master branch).

Per model, in the same run, each row in its own fresh subprocess (so peak memory figures
compare): MMSA's model and msakit's, both at MMSA's MOSI regression config
(``get_config_regression(NAME, "mosi")``; msakit's defaults follow it) with precomputed 768-d
text features (no BERT), on one unaligned-MOSI-shaped batch (batch 32, text 50x768, audio
375x5, vision 500x20, every step observed, random features and labels, seed 0). Both parameter
counts are reported.

Per row:

- training step: zero grads, forward, the method's training loss as its trainer computes it
  per batch, backward, the trainer's gradient clipping, one optimizer step (the trainer's kind,
  groups and learning rates); one update per batch of 32 on both sides, while
  ``trainer/batch`` = forward-backward + update / N shows the cost per batch of a trainer that
  accumulates N batches per update (MMSA's ``update_epochs``, msakit's ``accumulate``). Mean
  wall time and process CPU time (all threads) over the timed steps after warm-up steps.
  MulT keeps the step of BENCHMARKS.md section 4 on both sides: L1, clip_grad_value 0.6, Adam
  lr 2e-3 (MMSA's MulT trainer). Other msakit rows take the engine's step: the model's default
  training corruption, ``prepare_batch`` (input z-scoring fitted on the batch),
  ``model.loss(...)["total"]``, the config's clipping (by norm or value) and optimizer
  (``optimizer_groups``, ``lr``, ``weight_decay``); the epoch hooks see MOSI's 1,284 training
  ids and one untimed no-grad training forward fills Self-MM's ULGM memory, so its timed steps
  update the labels as from epoch 2 (MMSA's trainer likewise).
- inference: eval mode, no grad, samples/s over ``--infer-batches`` batches of 32.
- memory: ``peak_rss`` is the process peak (ru_maxrss) after the training steps, ``step_mem``
  that peak minus the resident size just before the first step (model, optimiser and data
  built, libraries imported).

Ratios per model: MMSA's time over msakit's (step, CPU, inference), msakit's memory over
MMSA's; the goal (issue 13) is no slower than MMSA for any model and ALMT at least 3x faster.
What each MMSA row needed to run without BERT is listed in ``MMSA_NOTES`` and in the report.

MMSA runs in the virtual environment ``_refbench.ensure_venv("mmsa")`` creates (the one
bench_text_vs_refs.py uses: ``python -m venv --system-site-packages``, then ``pip install
MMSA==2.2.1 einops``), so it reuses the installed torch; the script refuses to measure if pip
replaced torch in that venv. ALMT's source is ``git archive``d from a local mirror of
thuiar/MMSA (or a clone) at the commit ``_refbench.REPOS`` pins, into a temporary folder. On a
machine shared with other jobs use ``--threads 1`` (the default) and read the CPU times. Usage::

    python benchmarks/bench_mult_vs_mmsa.py --out bench_mmsa.json --markdown   # all six
    python benchmarks/bench_mult_vs_mmsa.py --models tfn,lmf --steps 10 --out b.json
    python benchmarks/bench_mult_vs_mmsa.py --models mult --threads 1 --variant heads=2 \\
        --out bench_mult.json --markdown   # BENCHMARKS.md section 4 (MulT only)
    python benchmarks/bench_mult_vs_mmsa.py --models almt --steps 1 --warmup 0   # smoke run
    python benchmarks/bench_mult_vs_mmsa.py --render bench_mmsa.json   # markdown from a result

``--variant [MODEL:]K=V[,K=V]`` adds an msakit row with config overrides (MODEL defaults to
mult; ``heads`` changes no MulT parameter count).
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

from _refbench import (  # benchmarks/
    MMSA_VERSION,
    add_common_args,
    cache_root,
    engine_step,
    ensure_venv,
    fetch_source,
    machine,
    time_inference,
    time_steps,
    worker_error,
)

SHAPES = {"text": (50, 768), "audio": (375, 5), "vision": (500, 20)}
MODELS = ["mult", "tfn", "lmf", "misa", "self_mm", "almt"]
MOSI_TRAIN = 1284  # MMSA's train_samples for MOSI: rows of Self-MM's label memory on both sides
CLIP_VALUE = 0.6  # MMSA's MulT trainer: clip_grad_value_(0.6)
LR = 2e-3  # MMSA's MulT lr
GOAL = {"almt": 3.0}  # issue 13: at least 3x faster for ALMT, no slower (1x) for the others
MMSA_STEPS = {"mult": 2}  # default timed MMSA steps where a step is slow (MulT: ~40 s, 12.5 GB)
# what each MMSA row needed to run on precomputed text features, as printed in the report
MMSA_NOTES = {
    "mult": "MULT(args) directly (use_bert false in its config: it reads the 768-d features); "
            "its trainer's step",
    "tfn": "AMIO(args); audio and vision averaged over time before the step, as its data "
           "loader does (need_normalized); optimizer over parameters()[2:] as its trainer",
    "lmf": "AMIO(args); audio and vision averaged over time before the step (need_normalized); "
           "its trainer's Adam groups parameters()[:3] (factor_lr) and [5:] (lr), which leave "
           "the rank weights and output bias untrained",
    "misa": "BertTextEncoder replaced by a parameter-free stand-in returning the precomputed "
            "features, which travel after MMSA's text_bert layout (ids, mask of 50 tokens, "
            "segments; use_bert stays true, MISA asserts it); so its audio/vision LSTMs read "
            "the first 50 frames, as MMSA packs them with the text lengths",
    "self_mm": "BertTextEncoder replaced by the same stand-in ([CLS] = the first feature step); "
               "its trainer's weighted losses, label, feature and centre updates as from epoch "
               "2 (train_samples 1,284); the two BERT optimizer groups are empty",
    "almt": "ALMT.py of MMSA master loaded into the 2.2.1 package; master's config for "
            "almt/mosi with use_bert false and bertmodel = Identity (its forward calls it "
            "always); its trainer's step (max_grad_norm is never applied)",
}


# ============================================================================ worker side
def _data(batch: int, seed: int = 0):
    """Random MOSI-shaped inputs {m: (batch, L, D)} and labels in [-3, 3]."""
    import torch

    g = torch.Generator().manual_seed(seed)
    x = {m: torch.randn(batch, L, D, generator=g) for m, (L, D) in SHAPES.items()}
    y = torch.empty(batch).uniform_(-3, 3, generator=g)
    return x, y


def _nparams(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _mmsa_args(name: str, config_file: str = ""):
    from MMSA.config import get_config_regression

    args = get_config_regression(name, "mosi", config_file)
    args.feature_dims = [SHAPES[m][1] for m in ("text", "audio", "vision")]
    args.train_mode = "regression"
    args.num_classes = 1
    args.device = "cpu"
    args.train_samples = MOSI_TRAIN
    return args


def _without_bert(module_name: str) -> None:
    """Make MMSA module ``module_name`` build a parameter-free stand-in for BertTextEncoder:
    its input is MMSA's text_bert layout (B, 3, L) followed by the (B, 768, L) features, its
    output the (B, L, 768) features."""
    import importlib

    from torch import nn

    class PrecomputedText(nn.Module):
        def __init__(self, *args, **kwargs):
            super().__init__()

        def forward(self, text):
            return text[:, 3:].transpose(1, 2)

    importlib.import_module(module_name).BertTextEncoder = PrecomputedText


def _build_mmsa(name: str, x: dict, y, src: str | None):
    """(fb, update, infer, info) of MMSA's ``name``: fb = zero grads, forward, the trainer's
    loss, backward and clipping; infer = one forward."""
    import torch

    t, a, v = x["text"], x["audio"], x["vision"]
    n, L = t.shape[0], t.shape[1]
    labels = y.view(-1, 1)
    info: dict = {"accum": 1}
    if name == "mult":
        from MMSA.models.singleTask.MULT import MULT

        args = _mmsa_args("mult")
        model = MULT(args)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=LR)

        def fwd():
            return model(t, a, v)["M"]

        def fb(i: int):
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.l1_loss(fwd(), labels)
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, CLIP_VALUE)
            return loss

        info.update(config={k: args[k] for k in ("dst_feature_dim_nheads", "nlevels")},
                    optimizer=f"Adam (lr {LR})", clip=f"value {CLIP_VALUE}", loss="L1",
                    accum=int(args.get("update_epochs", 1)))
    elif name == "almt":
        import importlib.util

        import MMSA.models.singleTask  # noqa: F401  (the 2.2.1 package the file loads into)

        if not src:
            raise SystemExit("almt: --src (MMSA master's source folder) is required")
        path = Path(src) / "src" / "MMSA" / "models" / "singleTask" / "ALMT.py"
        mspec = importlib.util.spec_from_file_location("MMSA.models.singleTask.ALMT", path)
        mod = importlib.util.module_from_spec(mspec)
        sys.modules[mspec.name] = mod
        mspec.loader.exec_module(mod)
        cfg = Path(src) / "src" / "MMSA" / "config" / "config_regression.json"
        args = _mmsa_args("almt", str(cfg))
        args.use_bert = False
        model = mod.ALMT(args)
        model.bertmodel = torch.nn.Identity()  # forward() calls it whatever use_bert says
        opt = torch.optim.AdamW(model.parameters(), lr=args.learning_rate,
                                weight_decay=args.weight_decay)
        crit = torch.nn.MSELoss()

        def fwd():
            return model(t, a, v)

        def fb(i: int):
            opt.zero_grad()
            loss = crit(fwd(), labels)
            loss.backward()
            return loss

        info.update(optimizer=f"AdamW (lr {args.learning_rate}, wd {args.weight_decay})",
                    clip="none", loss="MSE")
    else:
        if name in ("misa", "self_mm"):
            _without_bert("MMSA.models.singleTask.MISA" if name == "misa"
                          else "MMSA.models.multiTask.SELF_MM")
        from MMSA.models import AMIO

        args = _mmsa_args(name)
        model = AMIO(args)
        info["accum"] = int(args.get("update_epochs", 1))
        # MMSA's text_bert layout (ids, mask: every token, segment ids), then the features
        layout = torch.cat([torch.zeros(n, 1, L), torch.ones(n, 1, L), torch.zeros(n, 1, L),
                            t.transpose(1, 2)], 1)
        if name in ("tfn", "lmf"):
            # need_normalized: MMSA's data loader averages audio and vision over time
            a1, v1 = a.mean(1, keepdim=True), v.mean(1, keepdim=True)
            if name == "tfn":
                from MMSA.trains.singleTask.TFN import TFN as Trainer

                opt = torch.optim.Adam(list(model.parameters())[2:], lr=args.learning_rate)
                info.update(optimizer=f"Adam (lr {args.learning_rate}, parameters()[2:])")
            else:
                from MMSA.trains.singleTask.LMF import LMF as Trainer

                ps = list(model.parameters())
                opt = torch.optim.Adam([{"params": ps[:3], "lr": args.factor_lr},
                                        {"params": ps[5:], "lr": args.learning_rate}],
                                       weight_decay=args.weight_decay)
                info.update(optimizer=f"Adam (factors lr {args.factor_lr}, rest lr "
                            f"{args.learning_rate}, wd {args.weight_decay})")
            crit = Trainer(args).criterion

            def fwd():
                return model(t, a1, v1)["M"]

            def fb(i: int):
                opt.zero_grad()
                loss = crit(fwd(), labels)
                loss.backward()
                return loss

            info.update(clip="none", loss="L1")
        elif name == "misa":
            from MMSA.trains.singleTask.MISA import MISA as Trainer

            tr = Trainer(args)
            tr.model = model
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.Adam(params, lr=args.learning_rate)

            def fwd():
                return model(layout, a, v)["M"]

            def fb(i: int):  # trains/singleTask/MISA.py's loop body
                opt.zero_grad()
                out = fwd()
                cls_loss = tr.criterion(out, labels)
                diff_loss = tr.get_diff_loss()
                domain_loss = tr.get_domain_loss()
                recon_loss = tr.get_recon_loss()
                cmd_loss = tr.get_cmd_loss()
                sim = cmd_loss if args.use_cmd_sim else domain_loss
                loss = (cls_loss + args.diff_weight * diff_loss + args.sim_weight * sim
                        + args.recon_weight * recon_loss)
                loss.backward()
                if args.grad_clip != -1.0:
                    torch.nn.utils.clip_grad_value_(params, args.grad_clip)
                return loss

            info.update(optimizer=f"Adam (lr {args.learning_rate})",
                        clip=f"value {args.grad_clip}",
                        loss=f"MSE + {args.diff_weight} diff + {args.sim_weight} CMD + "
                             f"{args.recon_weight} recon")
        elif name == "self_mm":
            from MMSA.trains.multiTask.SELF_MM import SELF_MM as Trainer

            tr = Trainer(args)
            idx = torch.arange(n)
            tr.init_labels(idx, y)
            M = model.Model
            other = [p for nm, p in M.named_parameters() if "text_model" not in nm
                     and "audio_model" not in nm and "video_model" not in nm]
            groups = [
                {"params": list(M.audio_model.parameters()),
                 "weight_decay": args.weight_decay_audio, "lr": args.learning_rate_audio},
                {"params": list(M.video_model.parameters()),
                 "weight_decay": args.weight_decay_video, "lr": args.learning_rate_video},
                {"params": other, "weight_decay": args.weight_decay_other,
                 "lr": args.learning_rate_other},
            ]  # the trainer's two BERT groups hold no parameter here
            opt = torch.optim.Adam(groups)
            alen = torch.full((n,), SHAPES["audio"][0], dtype=torch.long)
            vlen = torch.full((n,), SHAPES["vision"][0], dtype=torch.long)
            heads = {"M": "fusion", "T": "text", "A": "audio", "V": "vision"}

            def fwd():
                return model(layout, (a, alen), (v, vlen))

            def fb(i: int):  # trains/multiTask/SELF_MM.py's loop body, from epoch 2 on
                opt.zero_grad()
                out = fwd()
                loss = 0.0
                for m in "MTAV":
                    loss = loss + tr.weighted_loss(out[m], tr.label_map[heads[m]][idx],
                                                   indexes=idx, mode=heads[m])
                loss.backward()
                f = [out[k].detach() for k in ("Feature_f", "Feature_t", "Feature_a", "Feature_v")]
                tr.update_labels(*f, 2, idx, out)
                tr.update_features(*f, idx)
                tr.update_centers()
                return loss

            info.update(optimizer=f"Adam, 3 groups (audio/vision lr {args.learning_rate_audio}"
                        f", rest {args.learning_rate_other}, wd {args.weight_decay_other})",
                        clip="none", loss="4 weighted L1 (M, T, A, V) with ULGM labels")
        else:
            raise SystemExit(f"--model {name!r}: expected one of {', '.join(MODELS)}")
    if "config" not in info:
        info["config"] = {}
    import MMSA

    info.update(params=_nparams(model), version=getattr(MMSA, "__version__", MMSA_VERSION),
                notes=MMSA_NOTES[name])
    return model, fb, opt.step, fwd, info


def _build_msakit(name: str, x: dict, y, sets: list[str]):
    """(model, fb, update, infer, info) of msakit's ``name`` (see the module docstring)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from msakit.data.batch import SplitData, collate
    from msakit.models import create_model

    n = len(y)
    overrides = dict(s.split("=", 1) for s in sets)
    model = create_model(name, {m: D for m, (_, D) in SHAPES.items()}, **overrides)
    cfg = model.config
    split = SplitData(x={m: v.numpy() for m, v in x.items()},
                      lengths={m: np.full(n, L, np.int64) for m, (L, _) in SHAPES.items()},
                      y=y.numpy(), ids=[f"s{i}" for i in range(n)])
    b = collate(split, np.arange(n), trim=False)
    info: dict = {"version": "msakit", "accum": int(cfg.accumulate)}
    if name == "mult":  # BENCHMARKS.md section 4: MMSA's MulT trainer step on both sides
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=LR)

        def fwd():
            return model(b)

        def fb(i: int):
            opt.zero_grad(set_to_none=True)
            loss = model.loss(model(b), b)["total"]
            loss.backward()
            torch.nn.utils.clip_grad_value_(params, CLIP_VALUE)
            return loss

        info.update(config={k: getattr(cfg, k) for k in ("d", "heads", "layers", "mem_layers",
                                                         "attn_dropout_mode")},
                    optimizer=f"Adam (lr {LR})", clip=f"value {CLIP_VALUE}", loss="L1")
    else:
        if cfg.normalize != "none":  # the engine z-scores inputs unless told not to
            model.fit_normalizer(split)
        # the engine's epoch hooks see a MOSI-sized training split whose first rows are the batch
        train = SimpleNamespace(ids=split.ids + [f"s{i}" for i in range(n, MOSI_TRAIN)],
                                y=np.concatenate([split.y, np.zeros(MOSI_TRAIN - n, np.float32)]))
        engine = SimpleNamespace(dataset=SimpleNamespace(label_range=(-3.0, 3.0),
                                                         splits={"train": train}))
        model.on_train_epoch_start(0, engine)
        model.train()
        with torch.no_grad():  # untimed: fills Self-MM's ULGM feature memory
            b0 = model.prepare_batch(b)
            model.loss(model(b0), b0)
        model.on_train_epoch_start(1, engine)  # the timed steps are epoch 2's
        fb, opt = engine_step(model, lambda i: b)
        kind = type(opt)
        clip, mode = float(cfg.grad_clip or 0.0), cfg.grad_clip_mode

        def fwd():
            return model(model.prepare_batch(b))

        groups = opt.param_groups
        lrs = sorted({g["lr"] for g in groups})
        fused = " fused" if groups[0].get("fused") else ""
        info.update(config={k: getattr(cfg, k) for k in overrides},
                    optimizer=f"{kind.__name__}{fused} (lr {'/'.join(map(str, lrs))}, wd "
                              f"{cfg.weight_decay}, {len(groups)} group(s))",
                    clip=f"{mode} {clip}" if clip else "none",
                    loss=f"model.loss total ({cfg.loss})",
                    corruption=cfg.default_corrupt)
    info["params"] = _nparams(model)
    return model, fb, opt.step, fwd, info


def worker(impl: str, name: str, batch: int, warmup: int, steps: int, infer_batches: int,
           out: Path, sets: list[str], threads: int, src: str | None) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    x, y = _data(batch)
    if impl == "mmsa":
        model, fb, upd, fwd, info = _build_mmsa(name, x, y, src)
    else:
        model, fb, upd, fwd, info = _build_msakit(name, x, y, sets)
    model.train()
    timed = time_steps(fb, upd, warmup, steps)
    model.eval()
    res = {
        "impl": impl,
        "model": name,
        **info,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        **timed,
        "trainer_batch_s": timed["mean_fb_s"] + timed["mean_update_s"] / info.get("accum", 1),
        **time_inference(fwd, infer_batches, batch, min(warmup, 1)),
    }
    out.write_text(json.dumps(res))


# ============================================================================ driver side
def run_worker(py: Path, impl: str, model: str, args: argparse.Namespace, steps: int,
               sets=(), src: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        cmd = [str(py), os.path.abspath(__file__), "--worker", impl, "--model", model,
               "--batch", str(args.batch), "--warmup", str(args.warmup), "--steps", str(steps),
               "--infer-batches", str(args.infer_batches), "--worker-out", str(out),
               "--threads", str(args.threads)]
        for s in sets:
            cmd += ["--set", s]
        if src is not None:
            cmd += ["--src", str(src)]
        t0 = time.perf_counter()
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if args.threads > 0:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if r.returncode != 0:
            return {"impl": impl, "model": model, **worker_error(r, 2000)}
        res = json.loads(out.read_text())
        res["wall_s"] = time.perf_counter() - t0
        return res


MEDIAN_FIELDS = ("mean_step_s", "min_step_s", "mean_cpu_s", "mean_fb_s", "mean_update_s",
                 "trainer_batch_s", "infer_samples_per_s", "infer_cpu_s", "peak_rss_mb",
                 "step_mem_mb")


def merge_repeats(rs: list[dict]) -> dict:
    """One row from its processes: the last one's details, each figure the median over the
    processes (``repeats`` keeps every process's figures)."""
    import statistics

    if len(rs) == 1 or any("error" in r for r in rs):
        return rs[-1]
    out = dict(rs[-1])
    for f in MEDIAN_FIELDS:
        vals = [r[f] for r in rs if r.get(f) is not None]
        if vals:
            out[f] = statistics.median(vals)
    out["step_s"] = [t for r in rs for t in r["step_s"]]
    out["repeats"] = [{f: r.get(f) for f in MEDIAN_FIELDS} for r in rs]
    return out


def ratios(mmsa: dict, ours: dict) -> dict:
    """MMSA's figure over ours for time (speed-ups), ours over MMSA's for memory (fractions),
    and whether the speed-ups reach the goal of the model."""
    if "error" in mmsa or "error" in ours:
        return {}
    goal = GOAL.get(ours.get("model", "mult"), 1.0)
    out = {
        "speedup_mean": mmsa["mean_step_s"] / ours["mean_step_s"],
        "speedup_min": mmsa["min_step_s"] / ours["min_step_s"],
        "cpu_speedup": mmsa["mean_cpu_s"] / ours["mean_cpu_s"],
        "peak_rss_fraction": ours["peak_rss_mb"] / mmsa["peak_rss_mb"],
        "goal": goal,
    }
    if mmsa.get("step_mem_mb") and ours.get("step_mem_mb"):
        out["step_mem_fraction"] = ours["step_mem_mb"] / mmsa["step_mem_mb"]
    if "infer_samples_per_s" in mmsa and "infer_samples_per_s" in ours:
        out["infer_speedup"] = ours["infer_samples_per_s"] / mmsa["infer_samples_per_s"]
    out["goal_met"] = out["speedup_mean"] >= goal and out.get("infer_speedup", goal) >= goal
    return out


def all_ratios(res: dict) -> dict:
    out = {}
    for key, r in res["runs"].items():
        model, _, side = key.partition(":")
        mmsa = res["runs"].get(f"{model}:mmsa")
        if side != "mmsa" and mmsa is not None and ratios(mmsa, r):
            out[key] = ratios(mmsa, r)
    return out


def _legacy(res: dict) -> dict:
    """A result of the MulT-only version of this script (rows msakit..., mmsa) in this one's
    layout (rows mult:msakit..., mult:mmsa)."""
    if "models" in res:
        return res
    runs = {f"mult:{k}": {**r, "model": "mult"} for k, r in res["runs"].items()}
    return {**res, "models": ["mult"], "runs": runs, "ratios": all_ratios({"runs": runs})}


def _t(v: float | None) -> str:
    if v is None:
        return "n/a"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def _cfg(r: dict) -> str:
    cfg = r.get("config") or {}
    if r.get("model", "mult") == "mult":
        heads = cfg.get("heads", (cfg.get("dst_feature_dim_nheads") or [None, "?"])[1])
        return f"heads {heads}"
    return ", ".join(f"{k}={v}" for k, v in cfg.items()) or "default"


def table(res: dict) -> str:
    rows = [
        "| row | params | config | mean step (s) | min step (s) | CPU per step (s) "
        "| trainer/batch (s) | timed steps | inference (samples/s) | peak RSS (MiB) "
        "| step memory (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, r in res["runs"].items():
        if "error" in r:
            last = (r["error"].strip().splitlines() or ["?"])[-1][:80].replace("|", "/")
            rows.append(f"| {key} | failed: {last} |" + " |" * 9)
            continue
        acc = r.get("accum", 1)
        tb = "n/a" if "trainer_batch_s" not in r else (
            _t(r["trainer_batch_s"]) + (f" (1/{acc})" if acc > 1 else ""))
        inf = r.get("infer_samples_per_s")
        mem = "n/a" if r["step_mem_mb"] is None else f"{r['step_mem_mb']:,.0f}"
        rows.append(
            f"| {key} | {r['params']:,} | {_cfg(r)} | {_t(r['mean_step_s'])} "
            f"| {_t(r['min_step_s'])} | {_t(r['mean_cpu_s'])} | {tb} | {len(r['step_s'])} "
            f"| {'n/a' if inf is None else f'{inf:,.1f}'} | {r['peak_rss_mb']:,.0f} | {mem} |"
        )
    return "\n".join(rows)


def ratio_table(res: dict) -> str:
    rts = res.get("ratios") or all_ratios(res)
    if not rts:
        return ""
    rows = [
        "| msakit row | step speed-up (mean; fastest; CPU) | inference speed-up "
        "| peak RSS / MMSA's | step memory / MMSA's | goal |",
        "|---|---|---|---|---|---|",
    ]
    for key, rt in rts.items():
        inf, mem = rt.get("infer_speedup"), rt.get("step_mem_fraction")
        met = "met" if rt.get("goal_met") else "**not met**"
        rows.append(
            f"| {key} | {rt['speedup_mean']:.2f}x; {rt['speedup_min']:.2f}x; "
            f"{rt['cpu_speedup']:.2f}x | {'n/a' if inf is None else f'{inf:.2f}x'} "
            f"| {rt['peak_rss_fraction']:.1%} | {'n/a' if mem is None else f'{mem:.1%}'} "
            f"| >= {rt.get('goal', 1.0):g}x: {met} |"
        )
    return "\n".join(rows)


def goal_line(res: dict) -> str:
    rts = res.get("ratios") or all_ratios(res)
    plain = {k: v for k, v in rts.items() if k.endswith(":msakit")}  # default configs only
    met = [k.split(":")[0] for k, v in plain.items() if v.get("goal_met")]
    missed = [k.split(":")[0] for k, v in plain.items() if not v.get("goal_met")]
    measured = {k.split(":")[0] for k in plain}
    absent = [m for m in res.get("models", []) if m not in measured]
    parts = [f"met for {', '.join(met)}" if met else "",
             f"**not met** for {', '.join(missed)}" if missed else "",
             f"not measured for {', '.join(absent)}" if absent else ""]
    return ("Goal (issue 13: no slower than MMSA in training step and inference, ALMT >= 3x; "
            "mean wall times, default configs): " + "; ".join(p for p in parts if p) + ".")


def markdown(res: dict) -> str:
    res = _legacy(res)
    m = res["machine"]
    load = res.get("loadavg", {})
    threads = sorted({r["threads"] for r in res["runs"].values() if "threads" in r})
    steps = []
    for key, r in res["runs"].items():
        if "error" in r or "optimizer" not in r:
            continue
        line = f"- {key}: loss {r['loss']}, clip {r['clip']}, {r['optimizer']}"
        if r.get("accum", 1) > 1:
            line += f"; its trainer accumulates {r['accum']} batches per update"
        if r.get("notes"):
            line += f"; {r['notes']}"
        steps.append(line)
    src = res.get("sources", {}).get("mmsa")
    models = ", ".join(res["models"])
    return "\n".join(
        [
            f"## msakit vs MMSA {MMSA_VERSION}: training step, inference and memory ({models})",
            "",
            f"- Command: `{res['command']}`",
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB RAM, Python "
            f"{m['python']}, torch {res['torch']} (CPU, torch threads: {'/'.join(map(str, threads))})",
            f"- Date: {res['date']}",
            f"- Load average (1/5/15 min) before: {load.get('before')}, after: "
            f"{load.get('after')}; on a shared machine other jobs inflate wall times",
            f"- Workload: batch {res['batch']}, text 50x768 (precomputed features, no BERT), "
            "audio 375x5, vision 500x20 (unaligned MOSI shapes), every step observed, random "
            "features (seed 0); both sides at MMSA's MOSI regression config. One training step "
            "= zero grads, forward, the trainer's loss, backward, its clipping, one optimizer "
            "update; trainer/batch = forward-backward + update / N for a trainer accumulating "
            "N batches. Inference: eval mode, no grad. Each row in its own subprocess; step "
            "memory = peak RSS after the training steps minus the RSS before the first step."
            + (f" Every row ran in {res['repeat']} processes, in rounds over all rows; each "
               "figure is the median over its processes (timed steps: all of them)."
               if res.get("repeat", 1) > 1 else ""),
            *([f"- ALMT: MMSA master, github {src['repo']} @ {src['commit'][:12]}"] if src else []),
            "",
            table(res),
            "",
            "Speed-ups are MMSA's time over msakit's (inference: msakit's samples/s over "
            "MMSA's); memory is msakit's over MMSA's.",
            "",
            ratio_table(res),
            "",
            goal_line(res),
            "",
            *(["Steps per row:", *steps, ""] if steps else []),
        ]
    )


def summary_line(key: str, r: dict) -> str:
    if "error" in r:
        return f"{key}: FAILED ({(r['error'].strip().splitlines() or ['?'])[-1][:120]})"
    return (
        f"{key}: {r['params']:,} params, {_t(r['mean_step_s'])} s/step "
        f"({_t(r['mean_cpu_s'])} CPU s), inference {r['infer_samples_per_s']:,.1f} samples/s, "
        f"peak RSS {r['peak_rss_mb']:,.0f} MiB"
    )


def parse_models(spec: str) -> list[str]:
    models = [m.strip() for m in spec.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad or not models:
        raise SystemExit(f"--models {spec!r}: expected a comma-separated subset of "
                         f"{','.join(MODELS)}")
    return list(dict.fromkeys(models))


def parse_variants(items: list[str], models: list[str]) -> dict[str, list[list[str]]]:
    out: dict[str, list[list[str]]] = {}
    for v in items:
        head, sep, rest = v.partition(":")
        model, body = (head.strip(), rest) if sep and "=" not in head else ("mult", v)
        sets = [kv.strip() for kv in body.split(",") if kv.strip()]
        if model not in models or not sets or any("=" not in kv for kv in sets):
            raise SystemExit(f"--variant {v!r}: expected [MODEL:]KEY=VALUE[,KEY=VALUE] with "
                             f"MODEL in --models ({','.join(models)}; default mult)")
        out.setdefault(model, []).append(sets)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS),
                    help="comma-separated models to compare (default: %(default)s)")
    add_common_args(ap)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row")
    ap.add_argument("--mmsa-steps", type=int, default=None,
                    help="timed steps for MMSA's rows (default: --steps, but at most 2 for "
                         "MulT, whose MMSA step takes ~40 s and 12.5 GB)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="run every row this many times, in rounds (each a fresh process); "
                         "the figures are the medians over the processes (a VM's speed drifts "
                         "between processes by up to ~30%%)")
    ap.add_argument("--infer-batches", type=int, default=3,
                    help="timed inference batches per row (default 3)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads per row (default 1: CPU times stay comparable on a "
                         "machine shared with other jobs; 0: torch's default)")
    ap.add_argument("--venv", type=Path, default=None, help="MMSA venv (default: user cache)")
    ap.add_argument("--git-dir", type=Path, default=None,
                    help="git dir of thuiar/MMSA for ALMT (default: $MSAKIT_BENCH_MIRROR or "
                         "/work/.mirror/thuiar+MMSA/repo, else a clone)")
    ap.add_argument("--skip-mmsa", action="store_true", help="measure msakit only")
    ap.add_argument("--variant", action="append", default=[], metavar="[MODEL:]K=V[,K=V]",
                    help="also time msakit's MODEL (default mult) with these config overrides "
                         "(e.g. heads=2)")
    ap.add_argument("--worker", choices=["mmsa", "msakit"], help=argparse.SUPPRESS)
    ap.add_argument("--model", choices=MODELS, default="mult", help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(args.worker, args.model, args.batch, args.warmup, args.steps, args.infer_batches,
               args.worker_out, args.set, args.threads, args.src)
        return
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    for name in ("batch", "steps", "mmsa_steps", "infer_batches", "repeat"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    models = parse_models(args.models)
    variants = parse_variants(args.variant, models)

    import torch

    res = {
        "command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
        "date": dt.datetime.now().isoformat(timespec="seconds"),
        "machine": machine(),
        "torch": torch.__version__,
        "batch": args.batch,
        "models": models,
        "warmup": args.warmup,
        "infer_batches": args.infer_batches,
        "repeat": args.repeat,
        "loadavg": {"before": [round(v, 2) for v in os.getloadavg()]},
        "sources": {},
        "runs": {},
    }
    todo: list[tuple[str, str, str, int, list[str]]] = []
    for m in models:
        todo.append((f"{m}:msakit", "msakit", m, args.steps, []))
        todo += [(f"{m}:msakit {','.join(v)}", "msakit", m, args.steps, v)
                 for v in variants.get(m, [])]
        if not args.skip_mmsa:
            mmsa_steps = args.mmsa_steps or min(MMSA_STEPS.get(m, args.steps), args.steps)
            todo.append((f"{m}:mmsa", "mmsa", m, mmsa_steps, []))
    mmsa_py: Path | None = None
    done: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="msakit-bench-mmsa-") as tmp:
        src: Path | None = None
        for key, impl, model, steps, sets in todo * args.repeat:
            if any("error" in r for r in done.get(key, [])):
                continue
            py = Path(sys.executable)
            try:
                if impl == "mmsa":
                    if mmsa_py is None:
                        mmsa_py = ensure_venv("mmsa", cache_root(), args.venv)
                    py = mmsa_py
                    if model == "almt" and src is None:
                        given = {"mmsa": str(args.git_dir)} if args.git_dir else {}
                        src, commit = fetch_source("mmsa", Path(tmp) / "mmsa", given, {},
                                                   ("src/MMSA",))
                        res["sources"]["mmsa"] = {"repo": "thuiar/MMSA", "commit": commit}
            except (SystemExit, subprocess.CalledProcessError) as e:
                res["runs"][key] = {"impl": impl, "model": model, "error": f"setup failed: {e}"}
                print(summary_line(key, res["runs"][key]), flush=True)
                continue
            r = run_worker(py, impl, model, args, steps, sets,
                           src if impl == "mmsa" and model == "almt" else None)
            done.setdefault(key, []).append(r)
            res["runs"][key] = merge_repeats(done[key])
            print(summary_line(key, r), flush=True)
    res["loadavg"]["after"] = [round(v, 2) for v in os.getloadavg()]
    res["ratios"] = all_ratios(res)
    print()
    print(table(res))
    rt = ratio_table(res)
    if rt:
        print()
        print(rt)
        print()
        print(goal_line(res))
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
