"""DashFusion's training step, inference and memory: msakit's ``dashfusion`` against the
reference code (ultramarineX/DashFusion, pinned in ``_refbench.REPOS``), same run.

Every row runs in its own fresh subprocess (so peak memory figures compare): the reference in
its own virtual environment (``--system-site-packages`` with the installed torch, plus its
pinned pytorch-metric-learning 0.9.99 and einops 0.7.0; created once, refused if pip replaced
torch), its source ``git archive``d at run time from a local mirror or a clone into a
temporary folder, never copied into the project. One unaligned-MOSI-shaped batch (batch 32,
text 50 x 768 precomputed features, audio 375 x 5, vision 500 x 20, every step observed,
random features and labels, seed 0) on both sides.

- Reference step: the loop body of ``src/train.py`` (``DashFusion_train``): zero grads,
  ``model(sample1, sample2)``, backward, its AdamW (weight decay 1e-3 except biases and
  LayerNorm weights, lr 5e-5) and linear warm-up schedule step. ``sample2`` holds the 6
  retrieved samples per anchor (2 + 2 + 2) that its dataset's ``sample`` gathers; they are
  random rows of the same shapes, gathered outside the timed step (the gathering is data
  loading). Its ``config.dataset`` is set to "mosi" (the file ships "sims"; both give the MOSI
  sizes: 2 audio/vision layers, fusion depth 2) and its BERT is replaced by a parameter-free
  stand-in that hands the precomputed features on (``BertTokenizer``/``BertModel`` patched in
  ``model.text_encoder``; the rest of its ``TextEncoder`` runs as written).
- msakit step: the engine's step for ``dashfusion`` (input z-scoring fitted on the batch,
  ``prepare_batch``, ``model.loss(...)["total"]`` with the contrastive term read from a bank of
  MOSI's 1,284 training rows, the config's optimiser; no clipping in its config).
- inference: eval mode, no grad, ``--infer-batches`` batches (the reference's ``eval``:
  ``model(sample, None)``).
- memory: the process's peak resident size after the training steps (model, optimiser, the
  batch, the libraries; the 1,284 training rows the refresh reads are made after it), and
  that peak less the resident size before the first step.
- refresh: what each pays every 2 epochs to renew its retrieval candidates, over MOSI's 1,284
  training rows: the reference's ``update_matrix`` (encode the training set at batch 128 in
  eval mode, then its dataset's ``__gen_cos_matrix``: an N x N cosine, a sort per row and the
  Python candidate lists); msakit's ``refresh_bank`` (encode the training set through the
  engine's unshuffled loader).

Rows: msakit's default, and ``--variant K=V[,K=V]`` rows (e.g. ``dropout=0.5``: the
reference's encoder layers run at dropout 0.5, its encoder classes' default argument). The
reference encodes 7 rows per anchor each step and msakit one, so the default step ratio is a
saving of the design, not of the same computation; ``--like-for-like`` adds the pair that is
(both without the contrastive term: the reference without ``sample2``, msakit with
``w_contrastive=0``). Ratios: the reference's time over msakit's, msakit's memory over the
reference's; the goal (issue 10) is at least 20x faster per training step and under 2 GB peak
at batch 32. Usage::

    python benchmarks/bench_dashfusion_vs_ref.py --variant dropout=0.5 --like-for-like \
        --out bench_dash.json --markdown
    python benchmarks/bench_dashfusion_vs_ref.py --ref-steps 1 --steps 1 --warmup 0  # smoke
    python benchmarks/bench_dashfusion_vs_ref.py --render bench_dash.json
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
    add_common_args,
    engine_step,
    machine,
    time_inference,
    time_steps,
    worker_error,
)
from bench_mult_vs_mmsa import SHAPES, _data, _nparams  # benchmarks/; MOSI unaligned shapes

MOSI_TRAIN = 1284  # rows of MOSI's training split: the bank and the reference's matrix
RETRIEVED = 6  # the reference's samples per anchor: 2 similar-same, 2 similar-different, 2 far
REF_LR, REF_WD, REF_EPOCHS, REF_WARMUP_EPOCHS = 5e-5, 1e-3, 100, 10  # its config.py, MOSI
GOAL_SPEEDUP, GOAL_PEAK_GB = 20.0, 2.0
GOAL_WORD = {True: "met", False: "**not met**", None: "-"}
REF_NOTES = ("config.dataset = 'mosi'; BertTokenizer/BertModel in model.text_encoder replaced "
             "by a parameter-free stand-in passing the precomputed 768-d features on; "
             "sample2 (6 rows per anchor) gathered outside the timed step")


# ============================================================================ worker side
def _build_ref(batch: int, src: str, sets: list[str]):
    """(model, fb, update, forward, refresh, info) of the reference (module docstring);
    ``contrastive=0`` in ``sets``: its step without ``sample2`` (no contrastive term)."""
    import torch
    from torch import nn

    sys.path.insert(0, str(Path(src) / "src"))
    import config  # the reference's src/config.py

    config.dataset = "mosi"
    config.DEVICE = torch.device("cpu")
    import model.text_encoder as te

    class _Ids(dict):  # what a tokenizer returns: a mapping with .to(device)
        def to(self, device):
            return self

    class StubTokenizer:
        @classmethod
        def from_pretrained(cls, *a, **k):
            return cls()

        def __call__(self, text, **kwargs):  # text: (features (B, L, 768), mask (B, L))
            return _Ids(features=text[0], attention_mask=text[1])

    class StubBert(nn.Module):
        @classmethod
        def from_pretrained(cls, *a, **k):
            return cls()

        def forward(self, features, attention_mask):
            return {"last_hidden_state": features}

    te.BertTokenizer, te.BertModel = StubTokenizer, StubBert
    import transformers as trans
    from model.dashfusion import DashFusion

    model = DashFusion(config=config)
    model.set_train([True] * 5)  # src/train.py

    def sample(n: int, seed: int) -> dict:
        x, y = _data(n, seed)
        L = {m: SHAPES[m][0] for m in SHAPES}
        return {"raw_text": (x["text"], torch.ones(n, L["text"], dtype=torch.long)),
                "audio": x["audio"], "vision": x["vision"], "regression_labels": y,
                # its dataset's masks: one extra (never padded) slot for the prepended CLS
                "audio_padding_mask": torch.zeros(n, L["audio"] + 1, dtype=torch.bool),
                "vision_padding_mask": torch.zeros(n, L["vision"] + 1, dtype=torch.bool)}

    contrastive = "contrastive=0" not in sets
    s1, s2 = sample(batch, 0), sample(RETRIEVED * batch, 1) if contrastive else None
    no_decay = ["bias", "LayerNorm.weight"]  # src/train.py's groups
    groups = [{"params": [p for n, p in model.named_parameters()
                          if not any(k in n for k in no_decay)], "weight_decay": REF_WD},
              {"params": [p for n, p in model.named_parameters()
                          if any(k in n for k in no_decay)], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(params=groups, lr=REF_LR, amsgrad=False)
    per_epoch = -(-MOSI_TRAIN // batch)
    sched = trans.optimization.get_linear_schedule_with_warmup(
        opt, num_warmup_steps=REF_WARMUP_EPOCHS * per_epoch,
        num_training_steps=REF_EPOCHS * per_epoch)

    def fb(i: int):
        opt.zero_grad()
        pred, all_loss, loss, const_loss = model(s1, s2, return_loss=True)
        all_loss.backward()
        return all_loss

    def update():
        opt.step()
        sched.step()

    def forward():
        return model(s1, None, return_loss=True)  # src/train.py's eval

    from dataloader.MOSI import MOSIDataset

    def refresh():  # src/train.py's update_matrix, then the dataset's update_matrix
        train = sample(MOSI_TRAIN, 2)
        ds = MOSIDataset.__new__(MOSIDataset)  # its matrix code, without its pickle
        ds.size, ds.data = MOSI_TRAIN, {"regression_labels": train["regression_labels"].numpy()}
        model.eval()
        t, v, a = [], [], []
        with torch.no_grad():
            for i in range(0, MOSI_TRAIN, 128):
                part = {k: (tuple(u[i:i + 128] for u in val) if isinstance(val, tuple)
                            else val[i:i + 128]) for k, val in train.items()}
                _t, _v, _a = model(part, None, return_loss=False)
                t.append(_t)
                v.append(_v)
                a.append(_a)
        ds.update_matrix(torch.cat(t), torch.cat(v), torch.cat(a))
        model.train()

    info = {"params": _nparams(model), "optimizer": f"AdamW (lr {REF_LR}, wd {REF_WD}, "
            "2 groups) + linear warm-up schedule",
            "loss": "MSE + 0.2 x NT-Xent" if contrastive else "MSE (no sample2)",
            "encoded_rows_per_step": (1 + RETRIEVED * contrastive) * batch, "notes": REF_NOTES}
    return model, fb, update, forward, refresh, info


def _build_msakit(batch: int, sets: list[str]):
    """(model, fb, update, forward, refresh, info) of msakit's dashfusion (module docstring)."""
    from types import SimpleNamespace

    import numpy as np
    import torch

    from msakit.data.batch import SplitData, collate
    from msakit.models import create_model
    from msakit.train.engine import loader

    overrides = dict(s.split("=", 1) for s in sets)
    model = create_model("dashfusion", {m: D for m, (_, D) in SHAPES.items()}, **overrides)
    cfg = model.config

    def split_of(n: int, seed: int) -> SplitData:
        x, y = _data(n, seed)
        return SplitData(x={m: v.numpy() for m, v in x.items()},
                         lengths={m: np.full(n, L, np.int64) for m, (L, _) in SHAPES.items()},
                         y=y.numpy(), ids=[f"s{i}" for i in range(n)])

    split = split_of(batch, 0)
    b = collate(split, np.arange(batch), trim=False)
    if cfg.normalize != "none":
        model.fit_normalizer(split)
    # a bank of MOSI's size for the timed steps (random entries: the search costs the same)
    g = torch.Generator().manual_seed(3)
    v = len(SHAPES) + 1
    model.set_bank(torch.randn(MOSI_TRAIN, v, cfg.d, generator=g),
                   torch.ones(MOSI_TRAIN, v, dtype=torch.bool),
                   model.label_class(torch.empty(MOSI_TRAIN).uniform_(-3, 3, generator=g)))
    fb, opt = engine_step(model, lambda i: b)
    clip, mode = float(cfg.grad_clip or 0.0), cfg.grad_clip_mode

    def forward():
        return model(model.prepare_batch(b))

    groups = opt.param_groups
    fused = " fused" if groups[0].get("fused") else ""
    info = {"params": _nparams(model), "config": overrides,
            "optimizer": f"{type(opt).__name__}{fused} (lr {cfg.lr}, wd {cfg.weight_decay}, "
                         f"{len(groups)} group(s))",
            "loss": f"model.loss total ({cfg.loss} + {cfg.w_contrastive} x contrastive)",
            "clip": f"{mode} {clip}" if clip else "none", "encoded_rows_per_step": batch,
            "bank_rows": model.bank_len()}

    def refresh():
        train = split_of(MOSI_TRAIN, 2)
        model.refresh_bank(SimpleNamespace(
            dataset=SimpleNamespace(splits={"train": train}),
            train_batches=lambda m: loader(m.prepare_split(train), cfg.batch_size)))

    return model, fb, opt.step, forward, refresh, info


def worker(impl: str, batch: int, warmup: int, steps: int, infer_batches: int, out: Path,
           sets: list[str], threads: int, src: str | None) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    torch.manual_seed(0)
    if impl == "ref":
        model, fb, upd, fwd, refresh, info = _build_ref(batch, src, sets)
    else:
        model, fb, upd, fwd, refresh, info = _build_msakit(batch, sets)
    model.train()
    res = {"impl": impl, **info, "torch": torch.__version__, "threads": torch.get_num_threads(),
           **time_steps(fb, upd, warmup, steps)}
    model.eval()
    res.update(time_inference(fwd, infer_batches, batch, min(warmup, 1)))
    t0, c0 = time.perf_counter(), time.process_time()
    refresh()
    res.update(refresh_s=time.perf_counter() - t0, refresh_cpu_s=time.process_time() - c0)
    out.write_text(json.dumps(res))


# ============================================================================ driver side
def run_worker(py: Path, impl: str, args: argparse.Namespace, steps: int, sets=(),
               src: Path | None = None) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "res.json"
        cmd = [str(py), os.path.abspath(__file__), "--worker", impl, "--batch", str(args.batch),
               "--warmup", str(args.warmup), "--steps", str(steps), "--infer-batches",
               str(args.infer_batches), "--worker-out", str(out), "--threads", str(args.threads)]
        for s in sets:
            cmd += ["--set", s]
        if src is not None:
            cmd += ["--src", str(src)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        if args.threads > 0:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(args.threads)
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp)
        if r.returncode != 0:
            return {"impl": impl, **worker_error(r, 2000)}
        res = json.loads(out.read_text())
        res["wall_s"] = time.perf_counter() - t0
        return res


def ratios(ref: dict, ours: dict) -> dict:
    if "error" in ref or "error" in ours:
        return {}
    out = {"step_speedup": ref["mean_step_s"] / ours["mean_step_s"],
           "cpu_speedup": ref["mean_cpu_s"] / ours["mean_cpu_s"],
           "infer_speedup": ours["infer_samples_per_s"] / ref["infer_samples_per_s"],
           "refresh_speedup": ref["refresh_s"] / ours["refresh_s"],
           "peak_rss_fraction": ours["peak_rss_mb"] / ref["peak_rss_mb"]}
    out["goal_met"] = (out["step_speedup"] >= GOAL_SPEEDUP
                       and ours["peak_rss_mb"] < GOAL_PEAK_GB * 1024)
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"- Command: `{res['command']}`",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['mem_gib']} GiB; torch {res['torch']}, "
        f"{res['threads']} thread(s) per row; {res['date']}; load average "
        f"{res['loadavg']['before']} before, {res['loadavg']['after']} after.",
        f"- Reference: {res['source']['repo']} @ {res['source']['commit'][:7]} ({REF_NOTES}).",
        f"- Batch {res['batch']}, MOSI unaligned shapes, {res['warmup']} warm-up step(s); "
        "step = forward, loss, backward, optimiser update; refresh = renewing the retrieval "
        f"candidates over {MOSI_TRAIN:,} training rows (every 2 epochs on both sides).",
        "",
        "| row | params | rows encoded / step | train step (s) | CPU / step (s) | "
        "inference (samples/s) | refresh (s) | peak RSS (GB) | step memory (GB) |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for key, r in res["runs"].items():
        if "error" in r:
            lines.append(f"| {key} | failed: {r['error'].splitlines()[-1][:80]} |||||||")
            continue
        sm = r.get("step_mem_mb")
        lines.append(
            f"| {key} | {r['params']:,} | {r['encoded_rows_per_step']} | {r['mean_step_s']:.3f} "
            f"| {r['mean_cpu_s']:.3f} | {r['infer_samples_per_s']:.1f} | {r['refresh_s']:.1f} | "
            f"{r['peak_rss_mb'] / 1024:.2f} | {'-' if sm is None else f'{sm / 1024:.2f}'} |")
    if res.get("ratios"):
        lines += ["", "| msakit row | against | step speed-up | CPU speed-up | inference "
                  "speed-up | refresh speed-up | peak RSS / reference's | goal (>= 20x, < 2 GB) |",
                  "|---|---|--:|--:|--:|--:|--:|---|"]
        for key, q in res["ratios"].items():
            lines.append(
                f"| {key} | {q['against']} | {q['step_speedup']:.1f}x | {q['cpu_speedup']:.1f}x | "
                f"{q['infer_speedup']:.1f}x | {q['refresh_speedup']:.1f}x | "
                f"{q['peak_rss_fraction']:.1%} | {GOAL_WORD[q['goal_met']]} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_args(ap)
    ap.add_argument("--steps", type=int, default=5, help="timed steps of msakit's rows")
    ap.add_argument("--ref-steps", type=int, default=2,
                    help="timed steps of the reference (default 2: ~1-2 min and >20 GB each)")
    ap.add_argument("--infer-batches", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads per row (0: default)")
    ap.add_argument("--variant", action="append", default=[], metavar="K=V[,K=V]",
                    help="also time msakit's dashfusion with these config overrides")
    ap.add_argument("--like-for-like", action="store_true",
                    help="also time both without the contrastive term (the reference without "
                         "sample2, msakit with w_contrastive=0): the same computation per step")
    ap.add_argument("--git-dir", type=Path, default=None,
                    help="git dir of ultramarineX/DashFusion (default: $MSAKIT_BENCH_MIRROR or "
                         "/work/.mirror, else a clone)")
    ap.add_argument("--skip-ref", action="store_true", help="measure msakit only")
    ap.add_argument("--worker", choices=["ref", "msakit"], help=argparse.SUPPRESS)
    ap.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--set", action="append", default=[], help=argparse.SUPPRESS)
    ap.add_argument("--src", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        worker(args.worker, args.batch, args.warmup, args.steps, args.infer_batches,
               args.worker_out, args.set, args.threads, args.src)
        return
    if args.render:
        print(markdown(json.loads(args.render.read_text())))
        return
    for name in ("batch", "steps", "ref_steps", "infer_batches"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if args.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    import torch
    from _refbench import cache_root, ensure_venv, fetch_source  # benchmarks/

    res = {"command": "python " + " ".join([os.path.relpath(__file__)] + sys.argv[1:]),
           "date": dt.datetime.now().isoformat(timespec="seconds"), "machine": machine(),
           "torch": torch.__version__, "threads": args.threads, "batch": args.batch,
           "warmup": args.warmup, "loadavg": {"before": [round(v, 2) for v in os.getloadavg()]},
           "runs": {}}
    todo = [("msakit", "msakit", [])]
    variants = args.variant + ["w_contrastive=0"] * args.like_for_like
    todo += [(f"msakit {v}", "msakit", v.split(",")) for v in variants]
    with tempfile.TemporaryDirectory(prefix="msakit-bench-dash-") as tmp:
        for key, impl, sets in todo:
            res["runs"][key] = r = run_worker(Path(sys.executable), impl, args, args.steps, sets)
            print(key, "failed" if "error" in r else f"{r['mean_step_s']:.3f} s/step", flush=True)
        if not args.skip_ref:
            given = {"dashfusion": str(args.git_dir)} if args.git_dir else {}
            src, commit = fetch_source("dashfusion", Path(tmp) / "dashfusion", given, {})
            res["source"] = {"repo": "ultramarineX/DashFusion", "commit": commit}
            py = ensure_venv("dashfusion", cache_root())
            for key, sets in [("reference", [])] + [("reference contrastive=0",
                                                      ["contrastive=0"])] * args.like_for_like:
                res["runs"][key] = r = run_worker(py, "ref", args, args.ref_steps, sets, src)
                print(key, "failed" if "error" in r else f"{r['mean_step_s']:.3f} s/step",
                      flush=True)
    res["loadavg"]["after"] = [round(v, 2) for v in os.getloadavg()]
    res["ratios"] = {}
    for k, r in res["runs"].items():  # each msakit row against its reference row
        against = "reference contrastive=0" if "w_contrastive=0" in k else "reference"
        ref = res["runs"].get(against)
        if not k.startswith("reference") and ref is not None and (q := ratios(ref, r)):
            res["ratios"][k] = q | {"against": against}
            if against != "reference":  # the goal is about the method's own step
                res["ratios"][k]["goal_met"] = None
    if args.markdown and "source" in res:
        print(markdown(res))
    if args.out:
        from msakit.fileio import write_json

        write_json(args.out, res)
    errors = [k for k, r in res["runs"].items() if "error" in r]
    for k in errors:
        print(f"\n{k} failed:\n{res['runs'][k]['error']}", file=sys.stderr)
    if errors:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
