"""Run config files for ``msakit train --config FILE`` (JSON, or YAML with PyYAML).

One file holds what a command line would: the model config overrides (``--set`` keys) and
training options. ``msakit tune`` writes its best trial in this format (``OUT/best.json``)::

    {"model": "late_fusion",                      # optional; must match --model
     "set": {"lr": 0.0012, "d": 64},              # model config fields, typed as --set values
     "train": {"epochs": 30, "patience": 8, "corrupt": "none"},
     "tune": {...}}                               # provenance, not read by train

Command-line options win over the file's values (the format and the precedence are ours).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from msakit.errors import ConfigError, MissingDataError, first_line

TOP_KEYS = ("model", "dataset", "set", "train", "tune")
# TrainConfig options a config file may set (the rest are per-machine display settings)
TRAIN_KEYS = ("epochs", "patience", "min_epochs", "corrupt", "domain", "select", "max_time_s",
              "precision")


@dataclass
class RunConfigFile:
    path: Path
    model: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)


def read_config_file(path: str | os.PathLike) -> RunConfigFile:
    """Read and check a run config file; unknown keys are refused naming the file and key."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MissingDataError(f"--config {path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"--config {path}: not readable ({e})") from None
    obj = _parse(path, text)
    if not isinstance(obj, dict):
        raise ConfigError(f"--config {path}: expected a mapping at the top level")
    bad = [k for k in obj if k not in TOP_KEYS]
    if bad:
        raise ConfigError(f"--config {path}: unknown key(s) {bad}; expected {', '.join(TOP_KEYS)}")
    sets, train = obj.get("set") or {}, obj.get("train") or {}
    for name, block in (("set", sets), ("train", train)):
        if not isinstance(block, dict):
            raise ConfigError(f"--config {path}: {name!r} must be a mapping of key: value")
    bad = [k for k in train if k not in TRAIN_KEYS]
    if bad:
        raise ConfigError(f"--config {path}: train: unknown key(s) {bad}; expected "
                          f"{', '.join(TRAIN_KEYS)}")
    model = obj.get("model")
    if model is not None and not isinstance(model, str):
        raise ConfigError(f"--config {path}: model must be a model name, got {model!r}")
    return RunConfigFile(path, model, {str(k): v for k, v in sets.items()}, dict(train))


def _parse(path: Path, text: str) -> Any:
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # pragma: no cover - PyYAML comes with the tune extra (optuna)
            raise ConfigError(f"--config {path}: YAML needs PyYAML (pip install pyyaml)") from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"--config {path}: not valid YAML ({first_line(e)})") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ConfigError(f"--config {path}: not valid JSON ({e})") from None


def merge_config(cfg: RunConfigFile, model: str, sets: dict[str, Any],
                 options: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(model overrides, train options): the file's, with the command line's winning.
    ``options`` holds the command line's train options, None where not given."""
    if cfg.model is not None and cfg.model != model:
        raise ConfigError(f"--config {cfg.path}: written for model {cfg.model!r}, not --model "
                          f"{model!r}")
    overrides = {**cfg.overrides, **sets}
    train = {**cfg.train, **{k: v for k, v in options.items() if v is not None}}
    return overrides, train
