"""Ridge references on a dataset: concatenated features (complete input) and per-subset ridge
experts under ``modality(mr)`` with the same protocol seed as the robustness sweeps.

    python benchmarks/ridge_reference.py --dataset mosi-bclstm --levels 0,0.1,0.2,0.3,0.4,0.5,0.6,0.7
"""

from __future__ import annotations

import argparse
import json

import msakit
from msakit.evaluate.baselines import ridge_concat, ridge_experts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dataset", default="mosi-bclstm")
    ap.add_argument("--levels", default="0,0.1,0.2,0.3,0.4,0.5,0.6,0.7")
    ap.add_argument("--protocol-seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    ds = msakit.load_dataset(a.dataset)
    res = {"concat": ridge_concat(ds), "experts": {}}
    for m in ds.present_modalities:
        res[f"only_{m}"] = ridge_concat(ds, (m,))
    for lv in a.levels.split(","):
        res["experts"][lv] = ridge_experts(ds, f"modality:{lv}", a.protocol_seed)
    print("| reference | acc2_non0 | f1_non0 | mae | corr |\n|---|--:|--:|--:|--:|")
    rows = [("ridge, all modalities concatenated", res["concat"])]
    rows += [(f"ridge, {m} only", res[f"only_{m}"]) for m in ds.present_modalities]
    rows += [(f"ridge experts, modality:{lv}", r) for lv, r in res["experts"].items()]
    for name, r in rows:
        print(f"| {name} | {r['acc2_non0']:.4f} | {r['f1_non0']:.4f} | {r['mae']:.4f} | {r['corr']:.4f} |")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
