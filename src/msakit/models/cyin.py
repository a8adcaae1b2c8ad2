"""CyIN: cyclic informative latent space (Lin et al., "CyIN: Cyclic Informative Latent Space for
Bridging Complete and Incomplete Multimodal Learning", 2025).

The paper's code is not public (RH-Lin/CyIN holds none), so this design is ours, following the
abstract: token- and label-level information bottlenecks build a compact latent per modality,
and a cross-modal translator, trained forward and back with cycle consistency, stands in for
missing modalities, so one model serves complete and incomplete input.

Blocks (each applied to every modality in turn):

1. Encoder: mask-aware mean pooling of long sequences to at most ``max_steps`` steps (ours, for
   speed; the window depends only on the sample's own observed length, so a prediction does not
   depend on batch mates), linear projection to ``d``, sinusoidal positions, a masked transformer
   (``layers.attention.AttentionEncoder``, pre-norm, ReLU feed-forward 2d).
2. Token-level IB: per step, a linear layer gives ``mu`` and ``logvar`` of a ``latent``-sized
   Gaussian; ``z = mu + sigma * eps`` in training, ``z = mu`` in evaluation (deterministic).
   KL to N(0, I), averaged over observed steps.
3. Label-level IB: the observed token latents are mean-pooled and mapped to a second Gaussian
   (``mu``, ``logvar``) giving one latent per modality; a small head must predict the sentiment
   label from it (the "label-level" prediction term), plus its KL to N(0, I).
4. Cross-modal cyclic translation: a cascaded residual autoencoder (CRA; Tran et al., CVPR 2017)
   over the concatenated label-level latents of all modalities plus availability flags; missing
   slots enter as zeros (the flags, taken from the masks, say which), each stage adds a residual
   correction. One translator serves every direction. Forward: present -> missing. Backward:
   the translated latents alone -> the present ones (cycle consistency).
   Training targets (ours): (a) observed modalities hidden at random from the translator
   (probability ``hide_p`` each, one always kept) with their own ``mu`` as target; (b)
   modalities the training corruption removed, with ``mu`` of the clean input
   (``batch.clean``, encoded without gradient inside ``loss`` only). Targets are
   detached (stop-gradient), so the translator cannot pull the latents into collapse.
5. Fusion: a masked transformer over [CLS; one summary token per modality; all observed token
   latents]. A modality's summary token is its label-level latent when observed, the translated
   latent when missing (marked by a learned "translated" embedding); token latents of a missing
   modality are masked out. A linear head on CLS gives the prediction.

Classification (``n_classes = K``): the final head and the label-level heads output K logits,
and ``pred`` / ``ib_pred`` become cross-entropy terms (``MSAModel.regression_loss``).

Loss (named terms, plus ``total``): ``pred`` + ``beta_token * kl_token`` + ``beta_label *
kl_label`` + ``w_ib * ib_pred`` + ``w_trans * trans`` + ``w_cycle * cycle``. All sizes, weights,
the logvar offset (latents start with small noise), the pooling, the choice of a CRA over label-
level latents, the fusion layout, the translation targets, no dropout on attention weights, and
the training corruption (``modality:0.3``, redrawn every epoch) are ours, picked for MOSI-sized
data on CPU; the paper's are not public. What follows the abstract: IB at token and label level
with a variational Gaussian and KL to N(0, I), cyclic (forward + backward) translation from
present to missing latents, a multimodal transformer over the latents, one model for complete
and incomplete input.

Text path of the reported numbers: precomputed text features (``text_encoder=features``,
the default) everywhere in BENCHMARKS.md; ``--set text_encoder=NAME`` fine-tunes a pretrained
encoder on the transcripts instead (models/layers/text.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from msakit.data.batch import Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import AttentionEncoder, PositionalEncoding, masked_mean, mlp, window_mean


@dataclass
class CyINConfig(ModelConfig):
    d: int = 64  # encoder width
    latent: int = 32  # size of token- and label-level IB latents (and of the fusion)
    enc_layers: int = 1
    fusion_layers: int = 2
    heads: int = 4  # encoder heads
    fusion_heads: int = 2  # 16-wide heads: 8-wide ones are ~3x slower on CPU
    dropout: float = 0.1
    max_steps: int = 50  # longer sequences are mean-pooled (mask-aware) to this many steps
    logvar_offset: float = 4.0  # logvar = linear - offset: latents start nearly deterministic
    cra_stages: int = 2
    cra_hidden: int = 128
    beta_token: float = 1e-3
    beta_label: float = 1e-3
    w_ib: float = 0.3
    w_trans: float = 1.0
    w_cycle: float = 0.5
    hide_p: float = 0.5  # chance each observed modality is hidden from the translator (training)
    clean_targets: bool = True  # also translate to modalities the corruption removed
    lr: float = 1e-3
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    default_corrupt: str | None = "modality:0.3"

    def check(self) -> None:
        if self.d % self.heads:
            raise ConfigError(f"cyin: d={self.d} must be divisible by heads={self.heads}")
        if self.latent % self.fusion_heads:
            raise ConfigError(
                f"cyin: latent={self.latent} must be divisible by fusion_heads={self.fusion_heads}"
            )
        if self.cra_hidden < 2:
            raise ConfigError(f"cyin: cra_hidden={self.cra_hidden}: expected an integer >= 2")


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) summed over the last dim."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(-1)


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` where ``weight`` (bool, same shape) is True; 0 (still in the graph)
    when nothing is selected."""
    w = weight.to(values.dtype)
    return (values * w).sum() / w.sum().clamp_min(1.0)


class CascadedResidualAE(nn.Module):
    """Translator over M stacked latents: x_{k+1} = x_k + AE_k([x_k; flags]).

    ``z`` (B, M, dz), ``avail`` (B, M) bool: unavailable slots enter as zeros (never read);
    returns the completed (B, M, dz)."""

    def __init__(self, n_mod: int, dz: int, hidden: int, stages: int) -> None:
        super().__init__()
        io = n_mod * dz
        self.stages = nn.ModuleList(
            mlp([io + n_mod, hidden, hidden // 2, hidden, io], act=nn.GELU) for _ in range(stages)
        )

    def forward(self, z: torch.Tensor, avail: torch.Tensor) -> torch.Tensor:
        B, M, dz = z.shape
        x = torch.where(avail.unsqueeze(-1), z, torch.zeros((), dtype=z.dtype)).reshape(B, M * dz)
        flags = avail.to(z.dtype)
        for ae in self.stages:
            x = x + ae(torch.cat([x, flags], -1))
        return x.view(B, M, dz)


@register_model("cyin", CyINConfig)
class CyIN(MSAModel):
    """CyIN: token/label-level information bottleneck + cyclic cross-modal translation."""

    reads_clean = True  # loss: clean-input targets

    def __init__(self, dims: dict[str, int], config: CyINConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        M, dz = len(self.mods), c.latent
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], c.d) for m in self.mods})
        self.pos = PositionalEncoding(c.d)
        # no dropout on attention weights (it takes torch off its fused kernel: costly on CPU)
        self.enc = nn.ModuleDict(
            {
                m: AttentionEncoder.like_torch(c.d, c.heads, c.enc_layers, 2 * c.d, c.dropout, 0.0)
                for m in self.mods
            }
        )
        self.tok_ib = nn.ModuleDict({m: nn.Linear(c.d, 2 * dz) for m in self.mods})
        self.lab_ib = nn.ModuleDict({m: nn.Linear(dz, 2 * dz) for m in self.mods})
        # label-level heads predict the label: out_dim outputs (class logits when classifying)
        self.lab_head = nn.ModuleDict({m: mlp([dz, dz, self.out_dim], c.dropout) for m in self.mods})
        self.translator = CascadedResidualAE(M, dz, c.cra_hidden, c.cra_stages)
        self.mod_emb = nn.Parameter(torch.randn(M, dz) * 0.02)
        self.src_emb = nn.Parameter(torch.zeros(2, dz))  # 0 = observed, 1 = translated
        self.cls = nn.Parameter(torch.randn(dz) * 0.02)
        self.fusion = AttentionEncoder.like_torch(
            dz, c.fusion_heads, c.fusion_layers, 4 * dz, c.dropout, 0.0
        )
        self.head = nn.Linear(dz, self.out_dim)

    def _gauss(self, stats: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, raw = stats.chunk(2, -1)
        logvar = raw - self.config.logvar_offset
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if self.training else mu
        return mu, logvar, z

    def encode(self, m: str, x: torch.Tensor, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        """One modality through encoder, token-level IB and label-level IB."""
        x, mask = window_mean(x, obs, self.config.max_steps)
        h = self.enc[m](self.pos(self.proj[m](x)), mask)  # (B, L', d)
        mu_t, lv_t, z_t = self._gauss(self.tok_ib[m](h))  # (B, L', dz)
        mu_l, lv_l, z_l = self._gauss(self.lab_ib[m](masked_mean(z_t, mask)))  # (B, dz)
        return {
            "mask": mask, "has": mask.any(1), "mu_tok": mu_t, "logvar_tok": lv_t, "z_tok": z_t,
            "mu_lab": mu_l, "logvar_lab": lv_l, "z_lab": z_l,
        }

    def forward(self, batch: Batch) -> Output:
        enc = {m: self.encode(m, batch.x[m], batch.observed(m)) for m in self.mods}
        z = torch.stack([enc[m]["z_lab"] for m in self.mods], 1)  # (B, M, dz)
        avail = torch.stack([enc[m]["has"] for m in self.mods], 1)  # (B, M)
        translated = self.translator(z, avail)
        summary = torch.where(avail.unsqueeze(-1), z, translated)
        B = z.shape[0]
        tokens = [
            self.cls.expand(B, 1, -1),
            summary + self.mod_emb + self.src_emb[(~avail).long()],
        ]
        masks = [avail.new_ones(B, 1 + len(self.mods))]
        for i, m in enumerate(self.mods):
            tokens.append(enc[m]["z_tok"] + self.mod_emb[i])
            masks.append(enc[m]["mask"])
        fused = self.fusion(torch.cat(tokens, 1), torch.cat(masks, 1))[:, 0]
        pred = self.head_output(self.head(fused))
        lab_pred = torch.stack(  # (B, M), or (B, M, K) logits when classifying
            [self.head_output(self.lab_head[m](enc[m]["z_lab"])) for m in self.mods], 1
        )
        return Output(
            pred,
            {
                "enc": enc, "z_lab": z, "avail": avail, "translated": translated,
                "summary": summary, "fused": fused, "lab_pred": lab_pred,
            },
        )

    def _clean_mu(self, m: str, batch: Batch, need: torch.Tensor) -> torch.Tensor | None:
        """Label-level mu of the clean input of modality m (no gradient, no dropout)."""
        if batch.corruption is None or not need.any():
            return None
        clean = batch.clean
        was = self.training
        self.eval()
        try:
            with torch.no_grad():
                return self.encode(m, clean.x[m], clean.observed(m))["mu_lab"]
        finally:
            self.train(was)

    def label_level_loss(
        self, lab_pred: torch.Tensor, y: torch.Tensor, avail: torch.Tensor
    ) -> torch.Tensor:
        """The task loss of the label-level heads, averaged over the observed (sample,
        modality) pairs; 0 (still in the graph) when nothing is observed."""
        if not avail.any():
            return lab_pred.sum() * 0.0
        ys = y.unsqueeze(1).expand(*avail.shape)
        return self.regression_loss(lab_pred[avail], ys[avail])

    def translation_losses(self, out: Output, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward translation and backward cycle losses (see module docstring)."""
        ex = out.extras
        enc, z, avail = ex["enc"], ex["z_lab"], ex["avail"]
        target = torch.stack([enc[m]["mu_lab"] for m in self.mods], 1).detach()  # (B, M, dz)
        # (a) hide observed modalities at random; one random observed modality is always kept
        score = torch.rand(avail.shape, device=z.device).masked_fill(~avail, -1.0)
        keep = nn.functional.one_hot(score.argmax(1), len(self.mods)).bool()
        hide = avail & ~keep & (torch.rand(avail.shape, device=z.device) < self.config.hide_p)
        tgt = hide.clone()
        # (b) modalities the training corruption removed: clean latents as targets
        if self.config.clean_targets and batch.corruption is not None:
            for i, m in enumerate(self.mods):
                clean_has = batch.clean.observed(m).any(1)
                need = clean_has & ~avail[:, i]
                mu_c = self._clean_mu(m, batch, need)
                if mu_c is not None:
                    target[:, i] = torch.where(need[:, None], mu_c, target[:, i])
                    tgt[:, i] |= need
        src = avail & ~hide
        fwd = self.translator(z, src)
        trans = weighted_mean((fwd - target).pow(2).mean(-1), tgt)
        back = self.translator(fwd, tgt)
        cyc_rows = src & tgt.any(1, keepdim=True)
        cycle = weighted_mean((back - target).pow(2).mean(-1), cyc_rows)
        return trans, cycle

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        enc, avail = out.extras["enc"], out.extras["avail"]
        pred = self.regression_loss(out.pred, batch.y)
        kl_t = torch.cat(
            [gaussian_kl(enc[m]["mu_tok"], enc[m]["logvar_tok"])[enc[m]["mask"]] for m in self.mods]
        )
        kl_token = kl_t.mean() if kl_t.numel() else out.pred.sum() * 0.0
        kl_l = torch.stack(
            [gaussian_kl(enc[m]["mu_lab"], enc[m]["logvar_lab"]) for m in self.mods], 1
        )
        kl_label = weighted_mean(kl_l, avail)
        ib_pred = self.label_level_loss(out.extras["lab_pred"], batch.y, avail)
        trans, cycle = self.translation_losses(out, batch)
        total = (
            pred + c.beta_token * kl_token + c.beta_label * kl_label + c.w_ib * ib_pred
            + c.w_trans * trans + c.w_cycle * cycle
        )
        return {
            "total": total, "pred": pred, "kl_token": kl_token, "kl_label": kl_label,
            "ib_pred": ib_pred, "trans": trans, "cycle": cycle,
        }
