"""The issue-3 robustness numbers: models x training corruption x datasets x protocols.

Default (the full run; resumable, finished runs in OUT are reused)::

    python benchmarks/run_matrix.py --out runs/issue3 \
        --datasets mosi-bclstm,synthetic-mosi --models late_fusion,mult \
        --train-corrupt none,frames:random --protocols frames,modality,subset \
        --seeds 1111,1112,1113 [--epochs N] [--accelerator gpu --device cuda]

For each dataset it calls :func:`msakit.evaluate.matrix.run_matrix` into ``OUT/<dataset>/``
(runs, one table set and figure per protocol), then writes

* ``DOCS/figures/robustness/<dataset>-<protocol>.png``: the sweep figures (small PNGs);
* ``DOCS/robustness.md``: every table (all metrics, every level, mean over levels);
* ``OUT/BENCHMARKS-issue3.md``: the Markdown block for BENCHMARKS.md (command, machine, date,
  headline tables, figure links), also printed.

Toy scale (what the test machine can afford)::

    python benchmarks/run_matrix.py --out /tmp/issue3 --docs /tmp/issue3/docs --epochs 1 \
        --seeds 1,2 --n 96,32,64 --set mult.d=16 --set mult.heads=2 --set mult.layers=1 \
        --set mult.mem_layers=1
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def split_list(s: str) -> list[str]:
    return [p.strip() for p in s.split(",") if p.strip()]


def machine(device: str) -> str:
    import torch

    cpu = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    desc = f"{platform.system()} {cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
    if device.startswith("cuda") and torch.cuda.is_available():
        desc += f", {torch.cuda.get_device_name(0)}"
    return desc


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/issue3")
    ap.add_argument("--docs", default=str(REPO / "docs"), help="where tables and figures go")
    ap.add_argument("--datasets", default="mosi-bclstm,synthetic-mosi")
    ap.add_argument("--models", default="late_fusion,mult")
    ap.add_argument("--train-corrupt", default="none,frames:random")
    ap.add_argument("--protocols", default="frames,modality,subset")
    ap.add_argument("--levels", action="append", default=[], help="PROTOCOL=LEVELS, repeatable")
    ap.add_argument("--seeds", default="1111,1112,1113")
    ap.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: engine's)")
    ap.add_argument("--set", action="append", default=[], help="model.key=value or key=value")
    ap.add_argument("--n", help="split sizes train,valid,test for synthetic datasets (toy runs)")
    ap.add_argument("--protocol-seed", type=int, default=0)
    ap.add_argument("--accelerator", default="cpu", help="Lightning accelerator for training")
    ap.add_argument("--device", default="cpu", help="torch device for evaluation")
    args = ap.parse_args(argv)

    from msakit.data.registry import DATASETS, load_dataset
    from msakit.evaluate.matrix import matrix_markdown, run_matrix
    from msakit.fileio import write_text

    out, docs = Path(args.out), Path(args.docs)
    figdir = docs / "figures" / "robustness"
    levels = dict(item.split("=", 1) for item in args.levels)
    t0 = time.time()
    blocks, tables = [], []
    for name in split_list(args.datasets):
        kw = {}
        if args.n and name in DATASETS and DATASETS.get(name).synthetic:
            kw["n"] = tuple(int(v) for v in args.n.split(","))
        ds = load_dataset(name, **kw)
        res = run_matrix(
            ds, split_list(args.models), out / name, protocols=split_list(args.protocols),
            train_corrupt=split_list(args.train_corrupt),
            seeds=[int(s) for s in split_list(args.seeds)], epochs=args.epochs, levels=levels,
            overrides=args.set, protocol_seed=args.protocol_seed, accelerator=args.accelerator,
            device=args.device, log=lambda m: print(m, file=sys.stderr, flush=True),
        )
        figures = {}
        for p, info in res["protocols"].items():
            pname = p.split(":")[0]
            dst = figdir / f"{name}-{pname}.png"
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(info["figure"], dst)
            figures[pname] = os.path.relpath(dst, REPO) if dst.is_relative_to(REPO) else str(dst)
            tables.append(f"## {name}: {pname}\n\n" + (Path(info["dir"]) / "robustness.md").read_text()
                          .split("\n", 1)[1])
        blocks.append(matrix_markdown(res["summary"], res["headline"], ds.label_scale, name, figures))
    hours = (time.time() - t0) / 3600
    write_text(docs / "robustness.md", "# Robustness tables (issue 3)\n\n"
               "Generated by `benchmarks/run_matrix.py`; mean ± std over training seeds; the protocol "
               "seed is fixed, so every model sees the same masks.\n\n" + "\n".join(tables))
    head = [
        "## Robustness matrix (issue 3)",
        "",
        f"- Command: `{' '.join(['python', *sys.argv])}`",
        f"- Machine: {machine(args.device)}; date {date.today().isoformat()}; wall time {hours:.2f} h",
        f"- Models {args.models}, trained with {args.train_corrupt}; seeds {args.seeds}; "
        f"epochs {args.epochs or 'engine default'}; protocol seed {args.protocol_seed}; test split",
        "- Selection on validation data only; every table: mean ± std over seeds. All tables: "
        f"`{os.path.relpath(docs / 'robustness.md', REPO) if (docs / 'robustness.md').is_relative_to(REPO) else docs / 'robustness.md'}`.",
        "",
    ]
    block = "\n".join(head) + "\n".join(blocks)
    write_text(out / "BENCHMARKS-issue3.md", block)
    print(block)


if __name__ == "__main__":
    main()
