"""The model contract and the model registry.

Every model: ``forward(batch) -> Output`` and ``loss(output, batch) -> {name: tensor}`` with a
``total`` entry. A model is registered with its typed config::

    @register_model("mult", MulTConfig)
    class MulT(MSAModel): ...

``create_model(name, dims={"text": 768, ...}, **overrides)`` builds it; the CLI reaches the
same function.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from msakit.data.batch import MODALITIES, Batch
from msakit.registry import Registry


@dataclass
class Output:
    """pred: (B,) sentiment; extras: anything the loss or analysis needs (named tensors)."""

    pred: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Fields shared by every model config; subclasses add their own."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 32
    grad_clip: float = 0.0
    loss: str = "l1"  # "l1" or "mse" for the sentiment regression term
    # training corruption the method's paper uses (e.g. "frames:random"); the engine applies it
    # unless the user passes --corrupt (then the user's choice wins; "none" disables it)
    default_corrupt: str | None = None


class MSAModel(nn.Module):
    """Base class. Subclasses set ``config`` and implement ``forward``; ``loss`` defaults to
    the regression loss on ``pred``."""

    config: ModelConfig

    def __init__(self, dims: dict[str, int], config: ModelConfig) -> None:
        super().__init__()
        # canonical order (text, audio, vision, then others), whatever order dims came in
        order = {m: i for i, m in enumerate(MODALITIES)}
        self.dims = {m: int(dims[m]) for m in sorted(dims, key=lambda m: (order.get(m, 99), m))}
        self.config = config

    def regression_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.config.loss == "mse":
            return nn.functional.mse_loss(pred, y)
        return nn.functional.l1_loss(pred, y)

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        reg = self.regression_loss(out.pred, batch.y)
        return {"total": reg, "pred": reg}

    # hooks the engine calls; a method that needs stages overrides them
    def on_train_epoch_start(self, epoch: int, engine: Any) -> None:
        """Called by the engine before each training epoch."""

    def on_fit_end(self, engine: Any) -> None:
        """Called after training, before evaluation (e.g. HME fills its memory bank)."""

    def param_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]


@dataclass
class ModelSpec:
    name: str
    cls: type[MSAModel]
    config_cls: type[ModelConfig]
    description: str = ""


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, config_cls: type[ModelConfig]):
    """Class decorator: register ``cls`` under ``name`` with its config dataclass."""

    def deco(cls: type[MSAModel]) -> type[MSAModel]:
        doc = (cls.__doc__ or "").strip().splitlines()
        MODELS.register(name, ModelSpec(name, cls, config_cls, doc[0] if doc else ""))
        return cls

    return deco


def _coerce(value: Any, typ: Any, key: str) -> Any:
    """Turn a ``--set key=value`` string into the config field's type."""
    if not isinstance(value, str):
        return value
    t = typ if isinstance(typ, type) else str(typ)
    try:
        if t in (bool, "bool"):
            if value.lower() in ("1", "true", "yes"):
                return True
            if value.lower() in ("0", "false", "no"):
                return False
            raise ValueError
        if t in (int, "int"):
            return int(value)
        if t in (float, "float"):
            return float(value)
        if "tuple" in str(t) or "list" in str(t):
            return tuple(type_guess(v) for v in value.split(",") if v)
    except ValueError:
        raise ValueError(f"--set {key}={value!r}: expected {t}") from None
    return value


def type_guess(v: str) -> Any:
    for f in (int, float):
        try:
            return f(v)
        except ValueError:
            pass
    return v


def make_config(name: str, **overrides: Any) -> ModelConfig:
    """The model's config with ``overrides`` applied; unknown keys are an error."""
    spec = MODELS.get(name)
    flds = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    bad = [k for k in overrides if k not in flds]
    if bad:
        raise ValueError(
            f"model {name!r} has no config field(s) {bad}; fields: {', '.join(sorted(flds))}"
        )
    vals = {k: _coerce(v, flds[k].type, k) for k, v in overrides.items()}
    return spec.config_cls(**vals)


def create_model(name: str, dims: dict[str, int], **overrides: Any) -> MSAModel:
    """Build registered model ``name`` for input ``dims`` (modality -> feature size)."""
    import msakit.models  # noqa: F401  (registers the built-in models)

    spec = MODELS.get(name)
    cfg = overrides.pop("config", None) or make_config(name, **overrides)
    return spec.cls(dims, cfg)
