"""Leave-one-domain-out on synthetic-domains (issue 11): ERM vs a published DG baseline vs MIDG
vs the target-domain oracle, and the share of the ERM-oracle gap each method closes.

    python benchmarks/domains.py --out /tmp/msakit-domains              # 3 seeds, full epochs
    python benchmarks/domains.py --epochs 1 --seeds 1 --out /tmp/dom1  # a quick check

For every split "the other domains -> D" (``msakit train --domain``): train and select on the
source domains only, report the target domain's test split. Methods:

- ERM: ``late_fusion`` on the pooled sources;
- DANN: the published adversarial domain classifier (Ganin et al. 2016) on MIDG's backbone,
  ``midg --set experts=1 adapter=false invariance=dann`` (as the midg docstring defines it;
  ``--dann-set`` changes it, e.g. ``invariance=dann`` alone);
- MIDG: ``midg`` with its defaults.

On real data (a ``join:A,B`` of datasets, e.g. ``--dataset join:mosi-text,mosei-text``) there
is no oracle: the reference is ERM trained and selected in the target domain itself.

Gap closed = (ERM target MAE - method target MAE) / (ERM target MAE - oracle target MAE),
per split, from the seed means (1 = reaches the Bayes-optimal oracle, 0 = no better than ERM,
negative = worse). Runs go to ``OUT/to-<target>/<method>``; finished seeds are reused, so
``--targets`` runs in separate processes and one run without it then gives the whole table.
Prints a Markdown table and writes it to ``OUT/domains.md`` (and ``OUT/domains.json``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import msakit
from msakit.evaluate.matrix import domain_splits, domain_target
from msakit.models.base import parse_sets
from msakit.train.engine import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthetic-domains")
    ap.add_argument("--out", type=Path, default=Path("/tmp/msakit-domains"))
    ap.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    ap.add_argument("--epochs", type=int, default=None, help="maximum epochs (default: the models')")
    ap.add_argument("--patience", type=int, default=None, help="early-stopping patience")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--accelerator", default="cpu")
    ap.add_argument("--dann-set", nargs="*", default=["experts=1", "adapter=false", "invariance=dann"],
                    help="midg settings of the DANN baseline")
    ap.add_argument("--midg-set", nargs="*", default=[], help="midg settings of MIDG")
    ap.add_argument("--targets", default=None,
                    help="comma list: run only the splits whose target domain is listed (e.g. "
                         "one process per target; a later run without it reuses their seeds)")
    ap.add_argument("--tune", type=int, default=0, metavar="TRIALS",
                    help="also 'MIDG (tuned)': per split, `msakit tune` of midg with TRIALS trials "
                         "scored on the source domains' validation rows, then its best config")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = msakit.load_dataset(args.dataset)
    splits = domain_splits(ds, ["domain"])
    if args.targets:
        want = args.targets.split(",")
        targets = {domain_target(ds, s) for s in splits}
        if not set(want) <= targets:
            ap.error(f"--targets: {sorted(set(want) - targets)} not among {sorted(targets)}")
        splits = [s for s in splits if domain_target(ds, s) in want]
    methods = [("ERM (late_fusion)", "late_fusion", {}),
               (f"DANN (midg {' '.join(args.dann_set)})", "midg",
                parse_sets(args.dann_set, ["midg"])["midg"]),
               ("MIDG" + (f" ({' '.join(args.midg_set)})" if args.midg_set else ""), "midg",
                parse_sets(args.midg_set, ["midg"])["midg"])]
    seeds = list(range(args.seeds))
    if args.tune:
        methods.append((f"MIDG (tuned, {args.tune} trials on source validation)", "midg", None))
    results: dict[str, dict] = {}
    tcfg = TrainConfig(accelerator=args.accelerator, patience=args.patience)
    t0 = time.time()
    for split in splits:
        target = domain_target(ds, split)
        res = results[split] = {"target": target, "methods": {}}
        for i, (label, model, over) in enumerate(methods):
            run = args.out / f"to-{target}" / ["erm", "dann", "midg", "midg-tuned"][i]
            if over is None:  # tuned: the search sees the sources' train/valid rows only
                from msakit.tune import tune

                best = tune("midg", ds, None, args.out / f"to-{target}" / "midg-tune",
                            args.tune, seed=1111, epochs=args.epochs, domain=split)["best"]
                over = best["config"]["set"]
            print(f"[{time.time() - t0:6.0f}s] {split}: {label} -> {run}", flush=True)
            s = msakit.train(model, ds, run, seeds=seeds, epochs=args.epochs, domain=split,
                             overrides=over, train_config=tcfg)
            res["methods"][label] = {k: {m: s[k][m] for m in ("mae", "acc2_non0", "corr")}
                                     for k in ("test", "test_source")}
            if "oracle" in s:
                res["oracle"] = {m: s["oracle"]["test"][m]["mean"] for m in ("mae", "acc2_non0")}
        if "oracle" not in res:  # real data: the reference is ERM trained in the target domain
            run = args.out / f"to-{target}" / "in-domain"
            print(f"[{time.time() - t0:6.0f}s] {split}: in-domain ERM on {target} -> {run}",
                  flush=True)
            s = msakit.train("late_fusion", target, run, seeds=seeds, epochs=args.epochs,
                             train_config=tcfg)
            res["oracle"] = {m: s["test"][m]["mean"] for m in ("mae", "acc2_non0")}
            res["reference"] = "ERM trained in the target domain"
    md = table(results, [m[0] for m in methods], ds.name, len(seeds), args.epochs)
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "domains.md").write_text(md)
    (args.out / "domains.json").write_text(json.dumps(results, indent=1))


def _pm(st: dict) -> str:
    return f"{st['mean']:.3f} ± {st['std']:.3f}" if st.get("n", 1) > 1 else f"{st['mean']:.3f}"


def table(results: dict, labels: list[str], dataset: str, n_seeds: int, epochs) -> str:
    erm = labels[0]
    real = any("reference" in r for r in results.values())
    ref = "in-domain ERM" if real else "oracle"
    head = ["split", "method", "target MAE", "target Acc-2", "source-test MAE",
            f"{ref} target MAE", f"{ref} target Acc-2", "gap closed (MAE)"]
    what = ("in-domain ERM: late_fusion trained and selected on the target domain itself"
            if real else "oracle: Bayes-optimal under the target's own law")
    lines = [f"### {dataset}: leave-one-domain-out, {n_seeds} seed(s)"
             + (f", at most {epochs} epochs" if epochs else "") + "\n",
             "Target: the held-out domain's test split (MAE and Acc-2 on the mosi [-3, 3] scale); "
             f"{what}; gap closed = (ERM MAE - MAE) / (ERM MAE - {ref} MAE).\n",
             "| " + " | ".join(head) + " |", "|" + "|".join([":--"] * 2 + ["--:"] * (len(head) - 2)) + "|"]
    closed: dict[str, list[float]] = {lab: [] for lab in labels[1:]}
    for split, r in results.items():
        e = r["methods"][erm]["test"]["mae"]["mean"]
        o = r["oracle"]["mae"]
        for lab in labels:
            m = r["methods"][lab]
            # no gap when ERM is already at or past the reference (e.g. a larger source domain)
            gap = "-" if lab == erm else f"{(e - m['test']['mae']['mean']) / (e - o):.2f}" if e > o else "n/a"
            if lab != erm and e > o:
                closed[lab].append((e - m["test"]["mae"]["mean"]) / (e - o))
            lines.append(f"| {split} | {lab} | {_pm(m['test']['mae'])} | {_pm(m['test']['acc2_non0'])} | "
                         f"{_pm(m['test_source']['mae'])} | {o:.3f} | {r['oracle']['acc2_non0']:.3f} | {gap} |")
    lines.append("")
    for lab, v in closed.items():
        if v:
            lines.append(f"- {lab}: gap closed {', '.join(f'{x:.2f}' for x in v)} (mean {sum(v) / len(v):.2f}; "
                         f"goal: >= 0.5 on every split)")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
