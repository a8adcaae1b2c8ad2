"""Train the model ``msakit predict/serve --run default`` serves and report its time and test
metrics (see msakit/serve/default.py for what it is trained on).

    python benchmarks/train_served_model.py [--out DIR] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from msakit.serve.default import (
    DATASET,
    EPOCHS,
    MODEL,
    OVERRIDES,
    PATIENCE,
    default_run_dir,
    train_default_model,
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=None, help="run folder (default: the msakit cache's)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    summary = train_default_model(args.out)
    took = time.perf_counter() - t0
    test = {k: round(v["mean"], 4) for k, v in summary["test"].items()}
    print(json.dumps({
        "model": MODEL, "dataset": DATASET, "overrides": OVERRIDES, "epochs": EPOCHS,
        "patience": PATIENCE, "out": str(args.out or default_run_dir()),
        "threads": args.threads, "machine": platform.processor() or platform.machine(),
        "train_seconds": round(took, 1), "test": test,
    }, indent=2))


if __name__ == "__main__":
    main()
