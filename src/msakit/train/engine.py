"""The one training engine (Lightning ``Trainer``) that every model goes through.

One call of :func:`fit_seed` trains one model on one dataset with one seed into a run folder::

    RUN/config.json      resolved model + training config, dataset, corruption, dims, seed
    RUN/ckpt/last.ckpt   Lightning checkpoint (resume after a kill)
    RUN/ckpt/best.ckpt   best epoch on validation data (never on test)
    RUN/model.pt         the selected weights (state_dict; load with weights_only=True)
    RUN/metrics.json     metrics per split (+ "oracle" per split on synthetic data)

Checkpoint selection and early stopping look at validation data only (MAE for regression,
accuracy for classification). A killed run resumes from ``last.ckpt`` to the same bytes as an
uninterrupted one: every epoch's shuffling, dropout and corruption draws are functions of
(seed, epoch) alone. One process writes a run folder at a time (an advisory lock).

Distributed data parallel (``TrainConfig(devices=N, num_nodes=M, strategy="ddp")``; Lightning's
DDP, gloo on CPU and NCCL on GPUs), launched by Lightning itself (it re-runs the same command
once per extra local process) or by ``torchrun`` (Lightning reads RANK/LOCAL_RANK/WORLD_SIZE).
Every rank runs the whole command; ours, not Lightning's defaults:

- the global batch stays ``batch_size``: each rank takes a contiguous share of every global
  batch of the (seed, epoch) order and scales its loss by ``world * n_rank / n_global``, so the
  averaged gradient of a per-sample-mean loss is the single-process gradient (unequal shares
  and short last batches included; a rank left without rows gets one row at weight 0);
- corruption is keyed by sample id (msakit.corrupt), so every sample gets the same masks on
  any rank; dropout draws are a function of (seed, epoch, rank);
- every rank validates on the whole validation split in the single-process order (weights are
  equal on all ranks), so selection and early stopping see the same numbers everywhere;
- rank 0 alone takes the run locks and writes config, checkpoints, logs, ``model.pt`` and
  ``metrics.json`` (it evaluates; the other ranks wait, then read ``metrics.json``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import functools
import gc
import logging
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Sampler

from msakit.corrupt import Protocol, parse_domain, parse_protocol
from msakit.data.batch import Batch, SplitData, collate
from msakit.data.dataset import SPLITS, MSADataset
from msakit.errors import ConfigError, MissingDataError, MsakitError, RunError, first_line
from msakit.fileio import atomic_path, check_out_dir, read_json, write_json
from msakit.metrics import dataset_metrics
from msakit.models.base import MSAModel, create_model, make_config

log = logging.getLogger("msakit")


DEFAULT_EPOCHS = 30
DEFAULT_PATIENCE = 8


@dataclass
class TrainConfig:
    """Engine settings (ours: MMSA-like early stopping on validation MAE)."""

    epochs: int | None = None  # None: the model config's (a paper preset's), else DEFAULT_EPOCHS
    patience: int | None = None  # None: the model config's, else DEFAULT_PATIENCE
    min_epochs: int = 1
    corrupt: str | None = None  # training-time corruption, e.g. "frames:random"
    # domain generalisation: "A,B->C" trains and selects on the source domains only and reports
    # on the target's test split ("test") and the sources' ("test_source"); see DomainSplit
    domain: str | None = None
    select: str = "auto"  # validation metric for selection: "auto" = mae (regression), acc (classes)
    eval_batch_size: int = 128
    deterministic: bool = True
    progress: bool = False
    accelerator: str = "cpu"
    # a wall-clock budget per seed for users: checked at epoch ends only, and recorded in
    # metrics.json as what ended the run; benchmarks never use it (results must not depend on it)
    max_time_s: float | None = None
    # data parallel training (see the module docstring): processes per node, nodes, strategy
    devices: int = 1
    num_nodes: int = 1
    strategy: str = "auto"  # "auto": single process, or "ddp" when devices * num_nodes > 1
    # Lightning's precision: "32" (default), or "bf16-mixed": forward and backward under
    # torch.autocast in bfloat16 (matmuls, attention), fp32 weights and optimiser; validation
    # and evaluation in fp32. On a CPU with AMX a fine-tuned bert-base step is 1.9-2.4x faster,
    # models on precomputed features 1.05-1.6x slower (BENCHMARKS §24).
    precision: str = "32"

    def __post_init__(self) -> None:
        for k in ("epochs", "min_epochs", "eval_batch_size"):
            v = getattr(self, k)
            if k == "epochs" and v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{k.replace('_', '-')} {v!r}: expected an integer >= 1")
        if self.patience is not None and (
                isinstance(self.patience, bool) or not isinstance(self.patience, int)
                or self.patience < 0):
            raise ConfigError(f"patience={self.patience!r}: expected an integer >= 0")
        for k in ("devices", "num_nodes"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"--{k.replace('_', '-')} {v!r}: expected an integer >= 1")
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"--strategy {self.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if self.max_time_s is not None and not self.max_time_s > 0:
            raise ConfigError(f"max_time_s={self.max_time_s!r}: expected seconds > 0")
        if self.corrupt not in (None, "", "none"):
            try:
                parse_protocol(self.corrupt)
            except (ValueError, KeyError) as e:
                raise ConfigError(f"--corrupt {self.corrupt!r}: {e}") from None
        if self.domain in ("", "none"):
            self.domain = None
        if self.domain is not None:
            # the syntax, and one spelling ("A,B->C"); names are checked against the dataset
            self.domain = parse_domain(self.domain).level
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.accelerator not in ACCELERATORS:
            raise ConfigError(
                f"--accelerator {self.accelerator!r}: expected one of {', '.join(ACCELERATORS)}"
            )
        from msakit.metrics import CLASSIFICATION_METRICS, metric_names

        known = {"auto", *CLASSIFICATION_METRICS} | {
            m for scale in ("mosi", "sims", "range") for m in metric_names(scale)
        }
        if self.select not in known:
            raise ConfigError(f"select={self.select!r}: expected auto or one of {sorted(known - {'auto'})}")


# TrainConfig fields that do not change what is computed (ignored when comparing configs)
DISPLAY_ONLY = ("progress", "accelerator", "eval_batch_size")
HIGHER_IS_BETTER = ("acc", "f1", "corr", "r2")
ACCELERATORS = ("cpu", "gpu", "cuda", "mps", "auto")
STRATEGIES = ("auto", "ddp")
PRECISIONS = ("32", "bf16-mixed")
# train keys added after runs existed: a config.json without them holds their default
TRAIN_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)
                  if f.name in ("devices", "num_nodes", "strategy", "precision")}


def with_train_defaults(record: dict) -> dict:
    """``record`` (a saved config or study identity) with its ``train`` block holding the
    default of every TRAIN_DEFAULTS key it lacks: what it meant when it was written."""
    train = record.get("train")
    if not isinstance(train, dict):
        return record
    return {**record, "train": {**TRAIN_DEFAULTS, **train}}


def _device(tcfg: TrainConfig) -> str:
    """The torch device type the engine trains and evaluates on: the one Lightning picks for
    ``tcfg.accelerator`` ("auto": CUDA, else Apple's MPS, else the CPU; "gpu": CUDA or MPS),
    so that evaluation and the bf16 autocast run where training does."""
    acc = tcfg.accelerator
    if acc in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "cuda"
    if acc in ("gpu", "mps", "auto") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def is_rank_zero() -> bool:
    """False in the non-zero ranks of a distributed run, read from the environment that
    torchrun (RANK) or Lightning's launcher (NODE_RANK, LOCAL_RANK) sets, so it is known
    before any process group exists; True in a plain single process."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"]) == 0
    return all(int(os.environ.get(k, 0) or 0) == 0 for k in ("NODE_RANK", "GROUP_RANK",
                                                              "LOCAL_RANK"))


def select_metric(tcfg: TrainConfig, task: str) -> tuple[str, str]:
    """(validation metric, "min"|"max") that selects checkpoints and stops early."""
    name = tcfg.select
    if name == "auto":
        name = "acc" if task == "classification" else "mae"
    return name, ("max" if name.startswith(HIGHER_IS_BETTER) else "min")


def save_state(model: torch.nn.Module, path: Path) -> None:
    """``model.state_dict()`` written atomically with the umask's permissions."""
    path, tmp = atomic_path(path)
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, path)


class _IndexSampler(Sampler):
    """Yields batches of row indices; a shuffled order is a function of (seed, epoch) only,
    the epoch read from ``epoch_fn`` (the trainer's) when an epoch's iteration starts, so a
    resumed run replays the same order (Lightning's set_epoch never reaches a batch_sampler).

    With ``lengths`` (shuffled loaders of a model that encodes token ids), rows are grouped by
    length inside windows of 50 batches of the shuffled order and the batches are shuffled
    again: batches hold similar lengths, so short sentences don't pay for long ones' padding.

    With ``world > 1`` each global batch is split into ``world`` contiguous shares (sizes
    differ by at most one) and rank ``rank`` yields its share; a rank left without rows gets the
    batch's first row. ``shares[i]`` is (rows of this rank, rows of the global batch) of the
    i-th batch of the current epoch (the engine's loss weight; 0 rows = a padding row).
    """

    WINDOW = 50

    def __init__(self, n: int, batch_size: int, shuffle: bool, seed: int, epoch_fn=None,
                 lengths: np.ndarray | None = None, rank: int = 0, world: int = 1) -> None:
        self.n, self.bs, self.shuffle, self.seed = n, batch_size, shuffle, seed
        self.epoch_fn = epoch_fn or (lambda: 0)
        self.lengths = lengths
        self.rank, self.world = rank, world
        self.shares: list[tuple[int, int]] = []

    def __iter__(self):
        order = np.arange(self.n)
        if not self.shuffle:
            batches = [order[i : i + self.bs] for i in range(0, self.n, self.bs)]
        else:
            rng = np.random.default_rng([self.seed, self.epoch_fn()])
            order = rng.permutation(self.n)
            if self.lengths is not None:
                w = self.WINDOW * self.bs
                order = np.concatenate([
                    c[np.argsort(self.lengths[c], kind="stable")]
                    for c in np.split(order, range(w, self.n, w))])
            batches = [order[i : i + self.bs] for i in range(0, self.n, self.bs)]
            if self.lengths is not None:
                batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.world > 1:
            parts = [np.array_split(b, self.world)[self.rank] for b in batches]
            self.shares = [(len(p), len(b)) for p, b in zip(parts, batches, strict=True)]
            batches = [p if len(p) else b[:1] for p, b in zip(parts, batches, strict=True)]
        for b in batches:
            yield b.tolist()

    def __len__(self) -> int:
        return (self.n + self.bs - 1) // self.bs


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def loader(
    split: SplitData, batch_size: int, shuffle: bool = False, seed: int = 0, epoch_fn=None,
    bucket: bool = False,
) -> DataLoader:
    """A DataLoader of :class:`Batch` over a split; evaluation loaders never shuffle. With
    ``bucket``, training batches group token sequences of similar length (see _IndexSampler;
    under DDP the engine sets its rank and world size, and it yields this rank's share)."""
    lengths = split.text_ids_mask.sum(1) if bucket and split.text_ids is not None else None
    sampler = _IndexSampler(len(split), batch_size, shuffle, seed, epoch_fn, lengths)
    return DataLoader(
        _Rows(len(split)),
        batch_sampler=sampler,
        collate_fn=lambda idx: collate(split, idx),
        num_workers=0,
    )


def lr_factor(step: int, total: int, warmup: float, kind: str) -> float:
    """Multiplier of the base lr at optimiser step ``step`` of ``total``: linear warm-up over
    ``warmup * total`` steps, then constant, cosine or linear decay to 0 at ``total``."""
    w = int(round(warmup * total))
    if step < w:
        return (step + 1) / w
    if kind == "constant":
        return 1.0
    t = min(1.0, (step - w) / max(1, total - w))
    return 0.5 * (1 + math.cos(math.pi * t)) if kind == "cosine" else 1.0 - t


class LitMSA(L.LightningModule):
    """Wraps any :class:`MSAModel`; applies training-time corruption; logs every loss term."""

    def __init__(self, model: MSAModel, tcfg: TrainConfig, seed: int, dataset: MSADataset) -> None:
        super().__init__()
        self.model = model
        self.tcfg = tcfg
        self.seed = seed
        self.corrupt: Protocol | None = parse_protocol(effective_corrupt(tcfg, model.config))
        self.metric_fn = dataset_metrics(dataset)
        self.select, self.mode = select_metric(tcfg, dataset.task)
        self._val: list[tuple[np.ndarray, np.ndarray]] = []
        self.engine: Any = None
        self.train_sampler: _IndexSampler | None = None  # set by the engine (DDP shares)

    def setup(self, stage: str) -> None:
        # the rank is known here, after Lightning's launcher and process group set-up
        if self.train_sampler is not None:
            self.train_sampler.rank = self.trainer.global_rank
            self.train_sampler.world = self.trainer.world_size

    @property
    def world(self) -> int:
        return self.trainer.world_size if self._trainer is not None else 1

    def transfer_batch_to_device(self, batch, device, dataloader_idx):
        return batch.to(device) if isinstance(batch, Batch) else batch

    def on_train_epoch_start(self) -> None:
        self.model.on_train_epoch_start(self.current_epoch, self.engine)

    def _reseed(self) -> None:
        """Every random draw of an epoch (dropout, model sampling) is a function of (seed,
        epoch), so a resumed run replays exactly what an uninterrupted one does. Called at the
        first training step: after the data iterator drew its own seed, and whether or not
        Lightning ran on_train_epoch_start (it skips it on some resumes)."""
        key = [self.seed, self.current_epoch] + ([self.global_rank] if self.world > 1 else [])
        s = int(np.random.SeedSequence(key).generate_state(1)[0])
        torch.manual_seed(s)
        np.random.seed(s)
        random.seed(s)

    def training_step(self, batch: Batch, batch_idx: int):
        if batch_idx == 0:
            self._reseed()
        if self.corrupt is not None:
            batch = self.corrupt(batch, seed=self.seed * 100_003 + self.current_epoch)
        batch = self.model.prepare_batch(batch)  # forward and loss see the same inputs
        out = self.model(batch)
        losses = self.model.loss(out, batch)
        ddp = self.world > 1
        for k, v in losses.items():
            self.log(f"train/{k}", v.detach(), on_step=False, on_epoch=True, batch_size=batch.size,
                     sync_dist=ddp)
        if ddp:  # DDP averages gradients over ranks: weight this rank's share of the batch
            mine, total = self.train_sampler.shares[batch_idx]
            return losses["total"] * (self.world * mine / total)
        return losses["total"]

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        # in fp32 whatever the training precision: selection sees what evaluation reports
        with torch.autocast(batch.y.device.type, enabled=False):
            out = self.model(batch)
        self._val.append((out.pred.detach().float().cpu().numpy(), batch.y.cpu().numpy()))

    def on_validation_epoch_end(self) -> None:
        if not self._val:
            return
        p = np.concatenate([a for a, _ in self._val])
        t = np.concatenate([b for _, b in self._val])
        self._val.clear()
        finite = bool(np.isfinite(p).all())
        m = self.metric_fn(np.nan_to_num(p, nan=0.0, posinf=0.0, neginf=0.0), t)
        if not finite:  # never scored as finite, never selected
            m = {k: (np.inf if self.mode == "min" else -np.inf) if k == self.select else np.nan
                 for k in m}
        for k, v in m.items():  # the same on every rank (the whole split each): no sync
            self.log(f"val/{k}", float(v), prog_bar=k == self.select)

    def configure_optimizers(self):
        cfg = self.model.config
        opt = self.model.make_optimizer()
        if cfg.lr_schedule == "constant" and cfg.warmup_frac == 0:
            return opt
        if cfg.lr_schedule == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                opt, mode=self.mode, factor=cfg.plateau_factor, patience=cfg.plateau_patience)
            return {"optimizer": opt, "lr_scheduler": {
                "scheduler": sched, "interval": "epoch", "monitor": f"val/{self.select}"}}
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, functools.partial(lr_factor, total=total, warmup=cfg.warmup_frac,
                                   kind=cfg.lr_schedule))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class NonFinitePredictions(RunError):
    """A model predicted NaN or inf (a diverged training)."""


@dataclass
class RunResult:
    run_dir: Path
    metrics: dict[str, dict[str, float]]
    config: dict = field(default_factory=dict)


def effective_corrupt(tcfg: TrainConfig, mcfg: Any) -> str:
    """The training corruption that actually runs: the user's, else the model's default."""
    spec = tcfg.corrupt if tcfg.corrupt is not None else mcfg.default_corrupt
    return "none" if spec in (None, "", "none") else spec


def effective_normalize(mcfg: Any, ds: MSADataset) -> str:
    """``auto`` -> ``zscore`` unless the dataset declares standardised features."""
    if mcfg.normalize == "auto":
        return "none" if ds.standardized else "zscore"
    return mcfg.normalize


def resolved_config(
    model_name: str, dataset: MSADataset, seed: int, tcfg: TrainConfig, overrides: dict
) -> dict:
    mcfg = make_config(model_name, **overrides)
    train = dataclasses.asdict(tcfg)
    train["epochs"] = tcfg.epochs or mcfg.epochs or DEFAULT_EPOCHS
    train["patience"] = next(p for p in (tcfg.patience, mcfg.patience, DEFAULT_PATIENCE)
                             if p is not None)
    train["corrupt"] = effective_corrupt(tcfg, mcfg)
    try:
        parse_protocol(train["corrupt"])
    except (ValueError, KeyError) as e:
        raise ConfigError(f"model {model_name!r}: default_corrupt={mcfg.default_corrupt!r}: "
                          f"{e}") from None
    train["select"] = "/".join(select_metric(tcfg, dataset.task))
    classes = dataset.classes
    return {
        "model": model_name,
        "model_config": dataclasses.asdict(mcfg),
        "overrides": {k: getattr(mcfg, k) for k in overrides},  # typed, as the config holds them
        "train": train,
        "normalize": effective_normalize(mcfg, dataset),
        "dataset": dataset.name,
        "dataset_hash": dataset.content_hash(),
        "dataset_info": dataset.info,
        "label_scale": dataset.label_scale,
        "classes": list(classes) if classes else None,
        "n_classes": len(classes) if classes else 0,
        "dims": dataset.dims,
        "seed": seed,
        "msakit_version": _version(),
    }


def config_diff(old: dict, new: dict, ignore_seed: bool = False) -> list[str]:
    """Keys (dotted) whose values differ between two resolved configs; display-only and
    version fields are ignored."""
    skip = {"msakit_version", "dataset_info", "overrides"} | ({"seed"} if ignore_seed else set())
    skip_train = set(DISPLAY_ONLY)
    out = []
    for k in sorted(set(old) | set(new)):
        if k in skip:
            continue
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            for kk in sorted(set(a) | set(b)):
                if k == "train" and kk in skip_train:
                    continue
                va, vb = a.get(kk), b.get(kk)
                if k == "train":
                    va, vb = (TRAIN_DEFAULTS.get(kk) if v is None else v for v in (va, vb))
                if va != vb:
                    out.append(f"{k}.{kk}: {va!r} -> {vb!r}")
        elif a != b:
            out.append(f"{k}: {a!r} -> {b!r}")
    return out


def check_dataset(cfg: dict, ds: MSADataset, where: str | os.PathLike) -> None:
    """Refuse to evaluate or resume a run on a dataset of the same name whose content changed
    since training (its content hash is in config.json)."""
    want, have = cfg.get("dataset_hash"), ds.content_hash()
    if cfg.get("dataset") == ds.name and want and have and want != have:
        raise RunError(
            f"{where}: dataset {ds.name!r} changed since this run was trained (content hash "
            f"{have[:12]} != {want[:12]} in config.json); retrain, or restore the data"
        )


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
    split = model.prepare_split(split)
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
    fn = dataset_metrics(dataset)
    res: dict[str, dict[str, float]] = {}
    for s in splits:
        r = predict(model, dataset.splits[s], batch_size, protocol, seed, dataset.oracle, device)
        bad = int((~np.isfinite(r["pred"])).sum())
        if bad:
            raise NonFinitePredictions(f"{bad} non-finite predictions on the {s} split")
        res[s] = fn(r["pred"], r["y"])
        if "oracle" in r:
            res[f"oracle/{s}"] = fn(r["oracle"], r["y"])
    return res


def load_checkpoint(path: Path) -> dict:
    """``torch.load(path, weights_only=True)`` on every supported torch; a refused or garbage
    file raises :class:`RunError` naming it (never torch's advice to drop weights_only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (pickle, zip and unpickler errors all mean the same)
        first = first_line(e)
        if "weights_only" in first or "Weights only load failed" in str(e):
            first = "it holds objects other than tensors and plain containers (refused)"
        elif len(first) < 20 or isinstance(e, (KeyError, EOFError)):  # torch's terse ones
            first = f"not a torch checkpoint or truncated ({type(e).__name__}: {first})"
        raise RunError(f"{path}: not a loadable msakit checkpoint: {first}") from None


def load_run_model(
    run_dir: str | os.PathLike, dataset: MSADataset | None = None
) -> tuple[MSAModel, dict]:
    """Rebuild a run's model from its config.json and model.pt (``weights_only=True``); with
    ``dataset``, refuse it when it is the training dataset with changed content."""
    run_dir = Path(run_dir)
    cfg_path, w_path = run_dir / "config.json", run_dir / "model.pt"
    for p in (cfg_path, w_path):
        if not p.exists():
            raise MissingDataError(f"{p}: not a finished msakit run (missing {p.name})")
    cfg = read_json(cfg_path)
    try:
        name, dims = cfg["model"], dict(cfg["dims"])
        overrides = dict(cfg.get("overrides") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise RunError(f"{cfg_path}: not an msakit run config (missing or bad {e})") from None
    if dataset is not None:
        check_dataset(cfg, dataset, run_dir)
    try:
        model = create_model(name, dims, n_classes=cfg.get("n_classes", 0), **overrides)
    except MsakitError as e:
        raise RunError(f"{cfg_path}: {e}") from None
    state = load_checkpoint(w_path)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise RunError(f"{w_path}: weights do not fit the model in config.json ({str(e)[:200]})") from None
    model.eval()
    return model, cfg


class RunLock:
    """An advisory lock on a run folder (``.msakit.lock``), released when the process ends
    (also on SIGKILL). A second writer gets :class:`RunError` naming the holder: at once, or
    with ``wait_s`` once the lock has stayed held that long (for locks held only briefly, such
    as a run folder's while seeds are claimed). In the non-zero ranks of a distributed run it
    does nothing (rank 0 holds it for all)."""

    def __init__(self, run_dir: Path, wait_s: float = 0.0) -> None:
        self.path = Path(run_dir) / ".msakit.lock"
        self.wait_s = wait_s
        self.fd: int | None = None

    def _acquire(self, fd: int) -> bool:
        import fcntl

        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except OSError:
                if time.monotonic() >= deadline:
                    return False
                time.sleep(0.1)

    def __enter__(self) -> RunLock:
        import socket

        if not is_rank_zero():
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        if not self._acquire(fd):
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunError(
                f"{self.path.parent}: another msakit process is writing this run folder "
                f"({holder}); wait for it or use another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None


class AtomicCheckpoint(L.pytorch.callbacks.ModelCheckpoint):
    """Lightning writes checkpoints in place; a kill mid-write would leave a truncated
    ``last.ckpt`` that cannot be resumed. Write beside it, then rename."""

    def _save_checkpoint(self, trainer, filepath: str) -> None:
        tmp = f"{filepath}.partial"
        super()._save_checkpoint(trainer, tmp)  # rank 0 writes, every rank waits for it
        if trainer.is_global_zero:
            os.replace(tmp, filepath)
        self._last_checkpoint_saved = filepath


class _TimeBudget(L.Callback):
    """Stops after the epoch during which ``max_time_s`` ran out (never mid-epoch)."""

    def __init__(self, seconds: float) -> None:
        self.seconds, self.t0, self.hit = seconds, 0.0, False

    def on_train_start(self, trainer, pl_module) -> None:
        self.t0 = time.monotonic()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        out = time.monotonic() - self.t0 >= self.seconds
        # clocks differ between ranks: stop all when any ran out
        if trainer.strategy.reduce_boolean_decision(out, all=False):
            self.hit = True
            trainer.should_stop = True


def fit_seed(
    model_name: str,
    dataset: MSADataset,
    seed: int,
    run_dir: str | os.PathLike,
    tcfg: TrainConfig | None = None,
    overrides: dict | None = None,
    verbose: bool = False,
    callbacks: list | None = None,
) -> RunResult:
    """Train (or resume, or reuse when finished) one seed into ``run_dir``.

    ``callbacks``: extra Lightning callbacks for this fit (e.g. Optuna's pruning callback);
    they see the same ``val/<metric>`` logs as checkpoint selection.

    A run folder holds one config: resuming or reusing it with another config, or with a
    dataset whose content changed, raises :class:`RunError` naming what differs."""
    tcfg = tcfg or TrainConfig()
    overrides = dict(overrides or {})
    run_dir = Path(run_dir)
    check_out_dir(run_dir)
    cfg = resolved_config(model_name, dataset, seed, tcfg, overrides)
    tcfg = dataclasses.replace(tcfg, epochs=cfg["train"]["epochs"],
                               patience=cfg["train"]["patience"])
    if tcfg.domain:  # the sources' train/valid and the test splits; no target train/valid row
        dataset = parse_domain(tcfg.domain).view(dataset)
    with RunLock(run_dir):
        if (run_dir / "config.json").exists():
            old = read_json(run_dir / "config.json")
            diff = config_diff(old, cfg)
            if diff:
                what = "a finished run" if (run_dir / "metrics.json").exists() else "an unfinished run"
                raise RunError(
                    f"{run_dir} holds {what} with another config ({'; '.join(diff)}); "
                    f"use another --out, or the same options to resume"
                )
            if (run_dir / "metrics.json").exists() and (run_dir / "model.pt").exists():
                return RunResult(run_dir, read_json(run_dir / "metrics.json"), old)
        elif is_rank_zero():
            write_json(run_dir / "config.json", cfg)
        res = _fit(model_name, dataset, seed, run_dir, tcfg, overrides, cfg, verbose,
                   callbacks or [])
    # Lightning's trainer, module and callbacks refer to each other: without a collection here
    # each fit's model, optimiser and data (a domain view of MOSEI: 1.4 GB) stay alive until
    # Python's next full collection, and a process that fits many seeds grows by that much
    # per fit (an ERM + DANN + MIDG run on MOSEI reached 13 GB and was OOM-killed)
    gc.collect()
    return res


def _fit(model_name, dataset, seed, run_dir, tcfg, overrides, cfg, verbose,
         extra_callbacks) -> RunResult:
    L.seed_everything(seed, workers=True, verbose=False)
    if tcfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    model = create_model(model_name, dataset.dims, n_classes=cfg["n_classes"], **overrides)
    if cfg["normalize"] == "zscore":
        model.fit_normalizer(dataset.splits["train"])
    lit = LitMSA(model, tcfg, seed, dataset)
    lit.engine = EngineContext(dataset, model.config.batch_size, seed)
    bs = model.config.batch_size
    train_dl = loader(model.prepare_split(dataset.splits["train"]), bs, shuffle=True, seed=seed,
                      epoch_fn=lambda: lit.current_epoch, bucket=model.text_encoder is not None)
    lit.train_sampler = train_dl.batch_sampler
    val_dl = loader(model.prepare_split(dataset.splits["valid"]), tcfg.eval_batch_size)

    ckpt_dir = run_dir / "ckpt"
    select = f"val/{lit.select}"
    ckpt_cb = AtomicCheckpoint(
        dirpath=ckpt_dir, filename="best", monitor=select, mode=lit.mode, save_last=True,
        save_top_k=1, enable_version_counter=False,
    )
    early = L.pytorch.callbacks.EarlyStopping(
        monitor=select, mode=lit.mode, patience=tcfg.patience, check_finite=False
    )
    callbacks: list[L.Callback] = [ckpt_cb, early, *extra_callbacks]
    budget = _TimeBudget(tcfg.max_time_s) if tcfg.max_time_s else None
    if budget:
        callbacks.append(budget)
    grad_clip = model.config.grad_clip or None
    last = ckpt_dir / "last.ckpt"
    # refuse a tampered/garbage checkpoint with one line before Lightning touches it
    resume_epoch = int(load_checkpoint(last).get("epoch", -1)) + 1 if last.exists() else 0
    distributed = tcfg.devices * tcfg.num_nodes > 1 or tcfg.strategy != "auto"
    with quiet_lightning(verbose), warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        warnings.filterwarnings("ignore", ".*sync_dist=True.*")  # val/ is equal on all ranks
        warnings.filterwarnings("ignore", ".*LeafSpec.*")
        warnings.filterwarnings("ignore", ".*is deprecated.*")
        trainer = L.Trainer(
            max_epochs=tcfg.epochs,
            min_epochs=tcfg.min_epochs,
            accelerator=tcfg.accelerator,
            devices=tcfg.devices,
            num_nodes=tcfg.num_nodes,
            strategy=_strategy(tcfg) if distributed else "auto",
            use_distributed_sampler=False,  # _IndexSampler shards the global batches itself
            callbacks=callbacks,
            default_root_dir=run_dir,
            logger=CSVRows(run_dir / "logs" / "metrics.csv", resume_epoch),
            enable_progress_bar=tcfg.progress,
            enable_model_summary=False,
            deterministic=tcfg.deterministic,
            gradient_clip_val=grad_clip,
            gradient_clip_algorithm=model.config.grad_clip_mode,
            accumulate_grad_batches=model.config.accumulate,
            plugins=[_BF16Mixed("bf16-mixed", _device(tcfg))]
            if tcfg.precision == "bf16-mixed" else None,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )
        resume = str(last) if last.exists() else None
        trainer.fit(lit, train_dl, val_dl, ckpt_path=resume, weights_only=True)

    if trainer.world_size > 1:  # rank 0 evaluates and writes; the others take its outcome
        return _finish_ranks(trainer, run_dir, cfg, lambda: _finish(
            model, lit, dataset, run_dir, tcfg, cfg, trainer, budget))
    return _finish(model, lit, dataset, run_dir, tcfg, cfg, trainer, budget)


def _strategy(tcfg: TrainConfig):
    # find_unused_parameters: some models leave a branch unused on some batches (a missing
    # modality); DDP would otherwise stop with "Expected to have finished reduction"
    from lightning.pytorch.strategies import DDPStrategy

    return DDPStrategy(find_unused_parameters=True)


def _finish_ranks(trainer, run_dir: Path, cfg: dict, finish) -> RunResult:
    """Rank 0 runs ``finish`` (evaluation, model.pt, metrics.json); every rank then gets its
    outcome (the error message when it failed) by one broadcast, so no rank waits forever."""
    import torch.distributed as dist

    outcome: list[Any] = [None]
    result: RunResult | None = None
    err: Exception | None = None
    if trainer.is_global_zero:
        try:
            result = finish()
        except Exception as e:  # noqa: BLE001  (re-raised below, after telling the others)
            err = e
        outcome = [str(err) if err is not None else None]
    dist.broadcast_object_list(outcome, src=0)
    if err is not None:
        raise err
    if result is not None:
        return result
    if outcome[0] is not None:
        raise RunError(f"{run_dir}: rank 0 failed: {outcome[0]}")
    return RunResult(run_dir, read_json(run_dir / "metrics.json"), cfg)


def _finish(model, lit, dataset, run_dir, tcfg, cfg, trainer, budget) -> RunResult:
    best = run_dir / "ckpt" / "best.ckpt"
    if best.exists():
        lit.load_state_dict(load_checkpoint(best)["state_dict"])
    device = _device(tcfg)
    model.to(device)
    model.on_fit_end(lit.engine)  # e.g. HME fills its memory bank from the training split
    model.cpu()
    save_state(model, run_dir / "model.pt")
    try:
        splits = (*SPLITS, *(s for s in dataset.splits if s not in SPLITS))  # + test_source
        metrics = evaluate_model(model, dataset, splits, batch_size=tcfg.eval_batch_size,
                                 device=device)
    except NonFinitePredictions as e:  # only when no validation epoch was finite
        raise RunError(
            f"{run_dir}: training diverged: {e} (try a lower lr, --set grad_clip=1, or check "
            f"the data with msakit datasets --inspect)"
        ) from None
    model.cpu()
    if budget is not None and budget.hit:
        stop = "max_time_s"
    elif trainer.current_epoch >= tcfg.epochs:
        stop = "max_epochs"
    else:
        stop = "early_stopping"
    metrics["_epochs_trained"] = {"epochs": float(trainer.current_epoch)}
    metrics["_stopped_by"] = {stop: 1.0}
    write_json(run_dir / "metrics.json", metrics)
    return RunResult(run_dir, metrics, cfg)


class _BF16Mixed(L.pytorch.plugins.MixedPrecision):
    """Lightning's bf16 autocast, with gradient clipping allowed for fused optimisers: Lightning
    refuses that pair because a fused step unscales fp16 gradients itself, but bf16 has no loss
    scaler, so the gradients clipped here are the true ones."""

    def clip_gradients(self, optimizer, clip_val=0.0, gradient_clip_algorithm=None) -> None:
        L.pytorch.plugins.Precision.clip_gradients(
            self, optimizer, clip_val, gradient_clip_algorithm or "norm")


class CSVRows(L.pytorch.loggers.Logger):
    """``logs/metrics.csv``, one row per logging call. A resumed run keeps the rows of the
    epochs before its checkpoint (Lightning's CSVLogger deletes them) and drops any later
    ones the killed process had written, so the file reads as one uninterrupted run."""

    def __init__(self, path: Path, resume_epoch: int = 0) -> None:
        super().__init__()
        self.path = Path(path)
        self.rows: list[dict] = []
        self.writer = is_rank_zero()  # in a distributed run rank 0 writes the file
        if resume_epoch > 0 and self.path.exists():
            with open(self.path, newline="") as f:
                self.rows = [r for r in csv.DictReader(f) if int(float(r.get("epoch") or 0)) < resume_epoch]
        elif self.path.exists() and self.writer:
            self.path.unlink()
        self._dirty = True

    @property
    def name(self) -> str:
        return "logs"

    @property
    def version(self) -> str:
        return ""

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        row = {k: (v.item() if isinstance(v, torch.Tensor) else v) for k, v in metrics.items()}
        row["step"] = step
        self.rows.append(row)
        self._dirty = True

    def save(self) -> None:
        if not self._dirty or not self.writer:
            return
        keys = sorted({k for r in self.rows for k in r} - {"epoch", "step"})
        _, tmp = atomic_path(self.path)
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["epoch", "step", *keys], restval="")
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)
        self._dirty = False

    def finalize(self, status: str) -> None:
        self.save()


@contextlib.contextmanager
def quiet_lightning(verbose: bool = False):
    """Silence Lightning's banners ("GPU available", tips) unless ``verbose``."""
    if verbose:
        yield
        return
    names = ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels, strict=True):
            lg.setLevel(lv)


@dataclass
class EngineContext:
    """What hooks may use: the dataset (training split for memory banks), batch size, seed."""

    dataset: MSADataset
    batch_size: int
    seed: int

    def train_batches(self, model: MSAModel | None = None):
        """Unshuffled batches of the training split, as ``model`` reads it when given."""
        split = self.dataset.splits["train"]
        return loader(split if model is None else model.prepare_split(split), self.batch_size)
