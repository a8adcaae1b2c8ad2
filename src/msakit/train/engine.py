"""The one training engine (Lightning ``Trainer``) that every model goes through.

One call of :func:`fit_seed` trains one model on one dataset with one seed into a run folder::

    RUN/config.json      resolved model + training config, dataset, corruption, dims, seed
    RUN/ckpt/last.ckpt   Lightning checkpoint (resume after a kill)
    RUN/ckpt/best.ckpt   best epoch on validation data (never on test)
    RUN/model.pt         the selected weights (state_dict; load with weights_only=True)
    RUN/metrics.json     metrics per split (+ "oracle" per split on synthetic data)

Checkpoint selection and early stopping look at validation MAE only.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from msakit.corrupt import Protocol, parse_protocol
from msakit.data.batch import Batch, SplitData, collate
from msakit.data.dataset import SPLITS, MSADataset
from msakit.evaluate.metrics import metrics_for
from msakit.models.base import MSAModel, create_model, make_config

log = logging.getLogger("msakit")


@dataclass
class TrainConfig:
    """Engine settings (ours: MMSA-like early stopping on validation MAE)."""

    epochs: int = 30
    patience: int = 8
    min_epochs: int = 1
    corrupt: str | None = None  # training-time corruption, e.g. "frames:random"
    select: str = "mae"  # validation metric for checkpoint selection (minimised)
    eval_batch_size: int = 128
    deterministic: bool = True
    progress: bool = False
    accelerator: str = "cpu"
    max_time_s: float | None = None  # wall-clock cap per seed (benchmarks); selection unchanged


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temporary file, then rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(obj, f, indent=2, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def save_state(model: torch.nn.Module, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


class _IndexSampler(Sampler):
    """Yields batches of row indices; reshuffled per epoch from (seed, epoch)."""

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int) -> None:
        self.n, self.bs, self.shuffle, self.seed, self.epoch = n, batch_size, shuffle, seed, 0

    def __iter__(self):
        order = np.arange(self.n)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            self.epoch += 1
        for i in range(0, self.n, self.bs):
            yield order[i : i + self.bs].tolist()

    def __len__(self) -> int:
        return (self.n + self.bs - 1) // self.bs


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def loader(split: SplitData, batch_size: int, shuffle: bool = False, seed: int = 0) -> DataLoader:
    """A DataLoader of :class:`Batch` over a split; evaluation loaders never shuffle."""
    sampler = _IndexSampler(len(split), batch_size, shuffle, seed)
    return DataLoader(
        _Rows(len(split)),
        batch_sampler=sampler,
        collate_fn=lambda idx: collate(split, idx),
        num_workers=0,
    )


class LitMSA(L.LightningModule):
    """Wraps any :class:`MSAModel`; applies training-time corruption; logs every loss term."""

    def __init__(self, model: MSAModel, tcfg: TrainConfig, seed: int, label_scale: str) -> None:
        super().__init__()
        self.model = model
        self.tcfg = tcfg
        self.seed = seed
        spec = tcfg.corrupt if tcfg.corrupt is not None else model.config.default_corrupt
        self.corrupt: Protocol | None = parse_protocol(spec)
        self.metric_fn = metrics_for(label_scale)
        self._val: list[tuple[np.ndarray, np.ndarray]] = []
        self.engine: Any = None

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, Batch) else batch

    def on_train_epoch_start(self) -> None:
        self.model.on_train_epoch_start(self.current_epoch, self.engine)

    def training_step(self, batch: Batch, batch_idx: int):
        if self.corrupt is not None:
            batch = self.corrupt(batch, seed=self.seed * 100_003 + self.current_epoch)
        out = self.model(batch)
        losses = self.model.loss(out, batch)
        for k, v in losses.items():
            self.log(f"train/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=batch.size)
        return losses["total"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        out = self.model(batch)
        self._val.append((out.pred.detach().cpu().numpy(), batch.y.cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        p = np.concatenate([a for a, _ in self._val])
        t = np.concatenate([b for _, b in self._val])
        self._val.clear()
        m = self.metric_fn(np.nan_to_num(p, nan=0.0), t)
        for k, v in m.items():
            self.log(f"val/{k}", float(v), prog_bar=k in ("mae",))

    def configure_optimizers(self):
        cfg = self.model.config
        return torch.optim.AdamW(self.model.param_groups(), lr=cfg.lr, weight_decay=cfg.weight_decay)


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    config: dict = field(default_factory=dict)


def resolved_config(
    model_name: str, dataset: MSADataset, seed: int, tcfg: TrainConfig, overrides: dict
) -> dict:
    mcfg = make_config(model_name, **overrides)
    return {
        "model": model_name,
        "model_config": dataclasses.asdict(mcfg),
        "overrides": overrides,
        "train": dataclasses.asdict(tcfg),
        "dataset": dataset.name,
        "dataset_info": dataset.info,
        "label_scale": dataset.label_scale,
        "dims": dataset.dims,
        "seed": seed,
        "msakit_version": _version(),
    }


def _version() -> str:
    from msakit import __version__

    return __version__


@torch.no_grad()
def predict(
    model: MSAModel,
    split: SplitData,
    batch_size: int = 128,
    protocol: Protocol | None = None,
    seed: int = 0,
    oracle=None,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Predictions on a split, in row order, under an optional corruption protocol.

    Returns ``pred``, ``y`` and, when ``oracle`` is given, ``oracle`` on the same masks."""
    model.eval()
    if device is not None:
        model.to(device)
    dev = next(model.parameters()).device
    preds, ys, orc = [], [], []
    for i in range(0, len(split), batch_size):
        b = collate(split, np.arange(i, min(i + batch_size, len(split))))
        if protocol is not None:
            b = protocol(b, seed=seed)
        preds.append(model(b.to(dev) if dev.type != "cpu" else b).pred.float().cpu().numpy())
        ys.append(b.y.numpy())
        if oracle is not None:
            orc.append(np.asarray(oracle(b), dtype=np.float64))
    out = {"pred": np.concatenate(preds), "y": np.concatenate(ys)}
    if oracle is not None:
        out["oracle"] = np.concatenate(orc)
    return out


def evaluate_model(
    model: MSAModel,
    dataset: MSADataset,
    splits: tuple[str, ...] = SPLITS,
    protocol: Protocol | None = None,
    seed: int = 0,
    batch_size: int = 128,
    device: str | torch.device | None = None,
) -> dict[str, dict[str, float]]:
    """Metrics per split; on synthetic data also ``oracle/<split>`` on the same samples/masks."""
    fn = metrics_for(dataset.label_scale)
    res: dict[str, dict[str, float]] = {}
    for s in splits:
        r = predict(model, dataset.splits[s], batch_size, protocol, seed, dataset.oracle, device)
        res[s] = fn(r["pred"], r["y"])
        if "oracle" in r:
            res[f"oracle/{s}"] = fn(r["oracle"], r["y"])
    return res


def load_run_model(run_dir: str | os.PathLike) -> tuple[MSAModel, dict]:
    """Rebuild a run's model from its config.json and model.pt (``weights_only=True``)."""
    run_dir = Path(run_dir)
    cfg_path, w_path = run_dir / "config.json", run_dir / "model.pt"
    for p in (cfg_path, w_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: not a finished msakit run (missing {p.name})")
    cfg = json.loads(cfg_path.read_text())
    model = create_model(cfg["model"], cfg["dims"], **cfg["overrides"])
    state = torch.load(w_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.eval()
    return model, cfg


def fit_seed(
    model_name: str,
    dataset: MSADataset,
    seed: int,
    run_dir: str | os.PathLike,
    tcfg: TrainConfig | None = None,
    overrides: dict | None = None,
) -> RunResult:
    """Train (or resume, or reuse when finished) one seed into ``run_dir``."""
    tcfg = tcfg or TrainConfig()
    overrides = dict(overrides or {})
    run_dir = Path(run_dir)
    cfg = resolved_config(model_name, dataset, seed, tcfg, overrides)
    if (run_dir / "metrics.json").exists() and (run_dir / "model.pt").exists():
        old = json.loads((run_dir / "config.json").read_text())
        if {k: old.get(k) for k in ("model", "overrides", "train", "dataset", "seed")} == {
            k: cfg[k] for k in ("model", "overrides", "train", "dataset", "seed")
        }:
            return RunResult(run_dir, json.loads((run_dir / "metrics.json").read_text()), old)
        raise FileExistsError(
            f"{run_dir} holds a finished run with a different config; use another --out"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json(run_dir / "config.json", cfg)

    L.seed_everything(seed, workers=True, verbose=False)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = create_model(model_name, dataset.dims, **overrides)
    lit = LitMSA(model, tcfg, seed, dataset.label_scale)
    lit.engine = EngineContext(dataset, model.config.batch_size, seed)
    bs = model.config.batch_size
    train_dl = loader(dataset.splits["train"], bs, shuffle=True, seed=seed)
    val_dl = loader(dataset.splits["valid"], tcfg.eval_batch_size)

    ckpt_dir = run_dir / "ckpt"
    select = f"val/{tcfg.select}"
    ckpt_cb = L.pytorch.callbacks.ModelCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=select, mode="min", save_last=True,
        save_top_k=1, enable_version_counter=False,
    )
    early = L.pytorch.callbacks.EarlyStopping(monitor=select, mode="min", patience=tcfg.patience)
    callbacks = [ckpt_cb, early]
    grad_clip = model.config.grad_clip or None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*is deprecated.*")
        trainer = L.Trainer(
            max_epochs=tcfg.epochs,
            max_time=None if tcfg.max_time_s is None else {"seconds": tcfg.max_time_s},
            min_epochs=tcfg.min_epochs,
            accelerator=tcfg.accelerator,
            devices=1,
            callbacks=callbacks,
            default_root_dir=run_dir,
            logger=L.pytorch.loggers.CSVLogger(run_dir, name="logs", version=""),
            enable_progress_bar=tcfg.progress,
            enable_model_summary=False,
            deterministic=tcfg.deterministic,
            gradient_clip_val=grad_clip,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        last = ckpt_dir / "last.ckpt"
        trainer.fit(lit, train_dl, val_dl, ckpt_path=str(last) if last.exists() else None)

    best = ckpt_dir / "best.ckpt"
    if best.exists():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        lit.load_state_dict(state)
    device = "cuda" if tcfg.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
    model.to(device)
    model.on_fit_end(lit.engine)  # e.g. HME fills its memory bank from the training split
    model.cpu()
    save_state(model, run_dir / "model.pt")
    metrics = evaluate_model(model, dataset, batch_size=tcfg.eval_batch_size, device=device)
    model.cpu()
    metrics["_epochs_trained"] = {"epochs": float(trainer.current_epoch)}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics, cfg)


@dataclass
class EngineContext:
    """What hooks may use: the dataset (training split for memory banks), batch size, seed."""

    dataset: MSADataset
    batch_size: int
    seed: int

    def train_batches(self):
        return loader(self.dataset.splits["train"], self.batch_size)
