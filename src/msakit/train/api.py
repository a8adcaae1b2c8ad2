"""``msakit.train``: several seeds of one model on one dataset, summarised as mean and std."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import numpy as np

from msakit.corrupt import parse_domain, parse_protocol, split_domain
from msakit.data.dataset import MSADataset, scale_of
from msakit.data.registry import load_dataset
from msakit.errors import ConfigError, RunError
from msakit.fileio import check_out_dir, read_json, write_json
from msakit.train.engine import (
    DISPLAY_ONLY,
    RunLock,
    TrainConfig,
    config_diff,
    fit_seed,
    is_rank_zero,
    load_run_model,
    resolved_config,
)

DEFAULT_SEEDS = (1111, 1112, 1113)
# how long a process waits for a run folder's lock held by another claiming its seeds or
# summarising (seconds each, ours): enough for many processes of a job array, each hashing
# the data, and short of hiding a process that holds it for another reason
CLAIM_WAIT_S = 600.0


def summarize(per_seed: list[dict[str, dict[str, float]]]) -> dict:
    """``{split: {metric: {"mean", "std", "n", "values"}}}``; ``oracle/<split>`` entries go under
    ``summary["oracle"][split]``. std is the sample std (ddof=1; 0 for one seed)."""
    out: dict[str, Any] = {}
    keys = [k for k in per_seed[0] if not k.startswith("_")]
    for key in keys:
        metrics = per_seed[0][key]
        block = {}
        for m in metrics:
            vals = np.array([r[key][m] for r in per_seed], dtype=np.float64)
            block[m] = {
                "mean": float(np.mean(vals)),
                "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                "n": len(vals),
                "values": vals.tolist(),
            }
        if key.startswith("oracle/"):
            out.setdefault("oracle", {})[key.split("/", 1)[1]] = block
        else:
            out[key] = block
    return out


def config_fingerprint(cfg: dict) -> str:
    """SHA-256 of a resolved run config without what differs between the seeds of one run
    (seed, version, dataset info, display-only settings): equal for every seed's fit of one
    config, e.g. the teachers a student records (MMSLF)."""
    import hashlib
    import json

    keep = {k: v for k, v in cfg.items()
            if k not in ("seed", "msakit_version", "dataset_info", "overrides")}
    keep["train"] = {k: v for k, v in dict(cfg.get("train") or {}).items()
                     if k not in DISPLAY_ONLY}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()


@dataclasses.dataclass
class StageContext:
    """What a model's ``stage_plan`` may use (models sit below the engine and import none of
    it): the dataset, ``resolve(overrides)`` (a fit's resolved config), ``fingerprint(config)``
    (:func:`config_fingerprint`) and ``load_run(run_dir)`` (``engine.load_run_model``)."""

    dataset: MSADataset
    resolve: Any
    fingerprint: Any = config_fingerprint
    load_run: Any = load_run_model


def stage_plan(model: str, overrides: dict, ctx: StageContext) -> dict | None:
    """The model class's ``stage_plan(overrides, ctx)`` when it has one: ``{"before":
    [(subfolder, overrides)], "overrides": dict, "callbacks": list}`` (each ``before`` stage
    is fitted, or reused when finished, in ``seed_S/<subfolder>`` before the seed's own fit,
    which gets the plan's overrides and extra Lightning callbacks); None for a model fitted
    in one stage."""
    import msakit.models  # noqa: F401  (registers the built-in models)
    from msakit.models.base import MODELS

    hook = getattr(MODELS.get(model).cls, "stage_plan", None)
    return hook(overrides, ctx) if hook is not None else None


def fit_planned(model: str, ds: MSADataset, seed: int, run_dir, tcfg: TrainConfig,
                overrides: dict, plan: dict | None, verbose: bool = False, callbacks=()):
    """One seed of a :func:`stage_plan`: its earlier stages in ``run_dir/<subfolder>`` (reused
    when finished), then the main fit with the plan's overrides and ``callbacks`` followed by
    the plan's own; a plain ``fit_seed`` when ``plan`` is None."""
    for sub, stage_overrides in (plan["before"] if plan else []):
        fit_seed(model, ds, seed, Path(run_dir) / sub, tcfg, stage_overrides, verbose=verbose)
    cbs = [*callbacks, *(plan["callbacks"] if plan else [])]
    return fit_seed(model, ds, seed, run_dir, tcfg, plan["overrides"] if plan else overrides,
                    verbose=verbose, callbacks=cbs or None)


def train(
    model: str,
    dataset: str | os.PathLike | MSADataset,
    out: str | os.PathLike,
    seeds: tuple[int, ...] | list[int] = DEFAULT_SEEDS,
    epochs: int | None = None,
    corrupt: str | None = None,
    overrides: dict | None = None,
    train_config: TrainConfig | None = None,
    progress: bool = False,
    verbose: bool = False,
    on_seed_start: Any = None,
    domain: str | None = None,
) -> dict:
    """Train ``model`` on ``dataset`` once per seed into ``out/seed_<s>/`` and write
    ``out/summary.json``: mean and std over every finished seed folder in ``out`` (the same set
    ``msakit eval`` averages). A run folder holds one config; seeds differ, nothing else.
    Processes may train other seeds into the same ``out`` at the same time (e.g. one seed per
    job of a job array); the last to finish writes the summary of them all.

    ``domain="A,B->C"`` (or a ``domain:A,B->C`` part of ``corrupt``) trains and selects on the
    source domains only; ``summary["test"]`` is then the target domains' test split and
    ``summary["test_source"]`` the sources' (see :class:`msakit.corrupt.DomainSplit`)."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("--seeds: expected at least one seed")
    dup = sorted({s for s in seeds if seeds.count(s) > 1})
    if dup:
        raise ConfigError(f"--seeds: seed(s) {dup} given more than once")
    out = check_out_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".msakit-write-test-{os.getpid()}"
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"--out {out}: not writable ({e.strerror or e})") from None
    ds = dataset if isinstance(dataset, MSADataset) else load_dataset(dataset)
    tcfg = dataclasses.replace(train_config) if train_config else TrainConfig()
    if epochs is not None:
        tcfg.epochs = epochs
    if corrupt is not None:
        try:
            parsed = parse_protocol(corrupt)
        except (ValueError, KeyError) as e:  # one line naming the option, as TrainConfig does
            raise ConfigError(f"--corrupt {corrupt!r}: {e.args[0] if e.args else e}") from None
        dom, rest = split_domain(parsed)
        if dom is not None:
            if domain is not None and parse_domain(domain).level != dom.level:
                raise ConfigError(f"--corrupt {corrupt!r} and --domain {domain!r} name different "
                                  f"domain splits; give one")
            domain, corrupt = dom.level, (rest.spec if rest is not None else "none")
        tcfg.corrupt = corrupt
    if domain is not None:
        tcfg.domain = domain
    tcfg.progress = progress
    tcfg.__post_init__()  # validate what the arguments changed
    # The folder lock is held while checking the seeds' configs and claiming them, and again
    # while summarising; each seed trains under its own folder's lock (fit_seed). So a process
    # that reaches a seed another one is training is refused, and one with another config is
    # refused before it trains anything. Processes started together (a job array) take the
    # folder lock in turn: it waits, up to CLAIM_WAIT_S, where a seed's lock refuses at once.
    with RunLock(out, wait_s=CLAIM_WAIT_S):
        # a model class may ask for stages fitted per seed before its own (MMSLF: the teacher
        # into seed_S/teacher/); its plan also gives the main fit's overrides and callbacks
        plan = stage_plan(model, dict(overrides or {}), StageContext(
            ds, lambda ov: resolved_config(model, ds, seeds[0], tcfg, ov)))
        overrides = plan["overrides"] if plan else overrides
        want = resolved_config(model, ds, seeds[0], tcfg, dict(overrides or {}))
        for d in sorted(out.glob("seed_*")):
            if (d / "config.json").exists():
                diff = config_diff(read_json(d / "config.json"), want, ignore_seed=True)
                if diff:
                    raise RunError(
                        f"{d} was trained with another config ({'; '.join(diff)}); a run folder "
                        f"holds one config: use another --out"
                    )
        for s in seeds:  # the claim: a later process with another config sees it
            claim = out / f"seed_{s}" / "config.json"
            if is_rank_zero() and not claim.exists():
                claim.parent.mkdir(exist_ok=True)
                write_json(claim, resolved_config(model, ds, s, tcfg, dict(overrides or {})))
    for i, s in enumerate(seeds):
        if on_seed_start is not None:
            on_seed_start(i, s)
        fit_planned(model, ds, s, out / f"seed_{s}", tcfg, overrides, plan, verbose)
    with RunLock(out, wait_s=CLAIM_WAIT_S):
        finished = [d for d in sorted(out.glob("seed_*")) if (d / "metrics.json").exists()]
        results = [read_json(d / "metrics.json") for d in finished]
        all_seeds = [read_json(d / "config.json")["seed"] for d in finished]
        summary = summarize(results)
        summary["_meta"] = {
            "model": model,
            "dataset": ds.name,
            "dataset_hash": want["dataset_hash"],
            "seeds": all_seeds,
            "corrupt": want["train"]["corrupt"],
            "normalize": want["normalize"],
            "protocol": "clean (no corruption at evaluation)",
            # which scale the metrics are on (and how joined datasets' labels were mapped)
            "label_scale": scale_of(ds),
            **({"label_scale_map": ds.info["label_scale_map"]}
               if "label_scale_map" in ds.info else {}),
            **({"domain": want["train"]["domain"], "splits": (
                "train/valid: the source domains' rows; test: the target domains' test rows "
                "(out of domain); test_source: the source domains' test rows (in domain)")}
               if want["train"].get("domain") else {}),
            "selection": f"best validation {want['train']['select']}",
            "epochs": want["train"]["epochs"],
        }
        if is_rank_zero():  # a distributed run: every rank summarises, rank 0 writes
            write_json(out / "summary.json", summary)
    return summary
