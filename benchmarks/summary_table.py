"""One Markdown table from run summaries (``msakit train``'s ``summary.json``): a row per run,
mean ± std over its seeds of the chosen test metrics, the seeds and the epochs each ran.

    python benchmarks/summary_table.py "lnln, fine-tuned MiniLM=/tmp/bcft/runs/lnln__frames-random" \
        "lnln, bc-LSTM text=docs/results/mosi-bclstm/summaries/lnln__frames-random.json"

Each argument is ``LABEL=PATH``; PATH is a run folder (its ``summary.json``) or a summary file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _cell(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}" if stat.get("n", 1) > 1 else f"{stat['mean']:.3f}"


def row(label: str, path: Path, metrics: list[str], split: str) -> str:
    if path.is_dir() and not (path / "summary.json").exists():  # seeds still running
        from msakit.train.api import summarize

        s = summarize([json.loads(m.read_text()) for m in sorted(path.glob("seed_*/metrics.json"))])
    else:
        s = json.loads((path / "summary.json" if path.is_dir() else path).read_text())
    cells = [_cell(s[split][m]) for m in metrics]
    n = s[split][metrics[0]].get("n", 1)
    epochs = ""
    if path.is_dir():
        ran = []
        for d in sorted(path.glob("seed_*")):
            m = d / "metrics.json"
            if m.exists():
                ran.append(str(int(json.loads(m.read_text())["_epochs_trained"]["epochs"])))
        epochs = ",".join(ran)
    return f"| {label} | {' | '.join(cells)} | {n} | {epochs} |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="LABEL=PATH")
    ap.add_argument("--metrics", default="acc2_non0,f1_non0,acc7,mae,corr")
    ap.add_argument("--split", default="test")
    a = ap.parse_args()
    metrics = a.metrics.split(",")
    print(f"| run | {' | '.join(metrics)} | seeds | epochs run |")
    print("|---|" + "--:|" * len(metrics) + "--:|---|")
    for spec in a.runs:
        label, sep, path = spec.rpartition("=")
        if not sep:
            raise SystemExit(f"{spec!r}: expected LABEL=PATH")
        print(row(label, Path(path), metrics, a.split))


if __name__ == "__main__":
    main()
