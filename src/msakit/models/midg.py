"""MIDG: a mixture of invariant experts with cross-modal knowledge injection, for domain
generalisation in MSA (Li, Luo, Hu 2025; the sixth seed paper). The paper has no public code
and its implementation details were not reachable from here: the design below is ours, built
from the abstract's two components (docs/methods.md, "MIDG").

Blocks, in the order data flows:

1. **Unimodal encoders.** Per modality a linear projection to ``d`` and a masked transformer
   (``layers.AttentionEncoder``, ``layers`` blocks). Steps under a False mask are zeroed before
   the projection and never attended to.
2. **Cross-modal adapter** (knowledge injection, ``adapter=true``). Per modality m, one pre-norm
   cross-attention block (``layers.AttentionBlock``, ``cross=True``) whose queries are m's steps
   and whose keys are the observed steps of every other modality, with a bottleneck
   feed-forward of width ``adapter_dim`` (an adapter layer). Its output enters m's stream
   through a learned gate, ``h_m + tanh(g_m) * (block(h_m, others) - h_m)``, so each modality's
   representation carries what the others know about the same utterance, and the model can
   turn the injection down where it hurts. A sample with no other observed modality gets no
   injection (the block's empty-row rule).
3. **Joint representation.** Masked mean per modality (an absent modality contributes a
   learned "missing" vector and a 0 presence flag), concatenated and mapped to ``d``: the
   modalities' synergy lives here, not in separate unimodal heads.
4. **Mixture of invariant experts.** ``experts`` residual MLP experts over the joint vector and a
   softmax gate computed from it; the mixture feeds the regression (or classification) head.
   Each expert's output is made domain-invariant by the penalty below, so the gate chooses
   among invariant views rather than among domain-specific shortcuts.
5. **Invariance penalty** (``invariance``; read in ``loss`` only, from ``batch.domain``):

   - ``cdann`` (default): a label-conditional adversarial domain classifier (CDANN, Li et al.
     ECCV 2018) on every expert's output through a gradient-reversal layer: the classifier
     sees the expert output and the label and tries to tell the domain; the experts learn to
     make that impossible. It asks for P(features | label) to be the same in every domain, not
     P(features): domains differ in their label prior (synthetic-domains' tilts, MOSI vs MOSEI),
     and marginal invariance would force the features to hide the label distribution itself.
   - ``dann``: the same classifier without the label (DANN, Ganin et al. JMLR 2016).
   - ``coral``: Deep CORAL (Sun & Saenko 2016): each domain's mean and covariance of the
     mixture output matched to the batch's.
   - ``none``: ERM with this architecture.

   The classifier has ``domain_slots`` outputs (domain indices must be below it); without domain
   labels in the batch the term is 0.

Baselines under the same protocol: ERM is any model trained on the pooled sources (e.g.
``late_fusion``, or ``midg --set invariance=none``); DANN / CORAL on the same backbone are
``midg --set experts=1 adapter=false invariance=dann`` (or ``coral``).

All defaults are ours (``preset`` has no ``paper`` entry: no reference values to cite).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import Batch
from msakit.errors import ConfigError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import AttentionBlock, AttentionEncoder, grad_reverse, masked_mean, mlp
from msakit.models.layers.attention import attention_mask

INVARIANCE = ("cdann", "dann", "coral", "none")


@dataclass
class MIDGConfig(ModelConfig):
    d: int = 64
    heads: int = 4
    layers: int = 1  # unimodal encoder depth
    dropout: float = 0.1
    adapter: bool = True  # the cross-modal adapter (knowledge injection)
    adapter_dim: int = 32  # bottleneck width of the adapter's feed-forward
    adapter_gate: float = 0.5  # initial g_m (injection weight tanh(g_m))
    experts: int = 4
    expert_hidden: int = 64
    invariance: str = "cdann"
    inv_weight: float = 0.1  # weight of the invariance term in the total loss
    grl_alpha: float = 1.0  # gradient-reversal strength (cdann, dann)
    domain_slots: int = 8  # outputs of the domain classifier (domain indices < this)
    head_hidden: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4

    CHOICES: ClassVar[dict[str, tuple]] = {"invariance": INVARIANCE}
    PRESETS: ClassVar[dict[str, dict]] = {}  # no reference implementation to cite

    def check(self) -> None:
        if self.d % self.heads:
            raise ConfigError(f"midg: d={self.d} must be divisible by heads={self.heads}")
        if self.domain_slots < 2:
            raise ConfigError(f"midg: domain_slots={self.domain_slots}: expected an integer >= 2")


@register_model("midg", MIDGConfig)
class MIDG(MSAModel):
    """MIDG: cross-modal adapters and a mixture of domain-invariant experts (domain generalisation)."""

    def __init__(self, dims: dict[str, int], config: MIDGConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.mods = tuple(self.dims)  # canonical order
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], c.d) for m in self.mods})
        self.enc = nn.ModuleDict({
            m: AttentionEncoder(c.d, c.heads, c.layers, ff=2 * c.d, attn_dropout=c.dropout,
                                ff_dropout=c.dropout, res_dropout=c.dropout)
            for m in self.mods
        })
        self.use_adapter = c.adapter and len(self.mods) > 1
        if self.use_adapter:
            self.adapter = nn.ModuleDict({
                m: AttentionBlock(c.d, c.heads, ff=c.adapter_dim, cross=True, null=False,
                                  attn_dropout=c.dropout, ff_dropout=c.dropout)
                for m in self.mods
            })
            self.adapter_gate = nn.ParameterDict({
                m: nn.Parameter(torch.full((), float(c.adapter_gate))) for m in self.mods})
        self.missing = nn.ParameterDict({m: nn.Parameter(torch.zeros(c.d)) for m in self.mods})
        self.joint = nn.Sequential(nn.Linear(len(self.mods) * (c.d + 1), c.d), nn.GELU(),
                                   nn.LayerNorm(c.d))
        self.gate = nn.Linear(c.d, c.experts)
        self.experts = nn.ModuleList(
            [mlp([c.d, c.expert_hidden, c.d], c.dropout, nn.GELU) for _ in range(c.experts)])
        self.head = mlp([c.d, c.head_hidden, self.out_dim], c.dropout)
        if c.invariance in ("cdann", "dann"):
            cond = self.out_dim if c.invariance == "cdann" else 0
            self.domain_clf = mlp([c.d + cond, c.d, c.domain_slots], c.dropout)
            self.grad_exempt = {
                "domain_clf.*": "trained only by the invariance term, which needs batch.domain"}

    def forward(self, batch: Batch) -> Output:
        obs = {m: batch.observed(m) for m in self.mods}
        h = {}
        for m in self.mods:
            x = batch.x[m].masked_fill(~obs[m].unsqueeze(-1), 0.0)
            h[m] = self.enc[m](self.proj[m](x), obs[m])  # (B, L_m, d)
        if self.use_adapter:
            injected = {}
            for m in self.mods:
                others = [o for o in self.mods if o != m]
                ctx = torch.cat([h[o] for o in others], 1)  # (B, sum L_o, d)
                keep = torch.cat([obs[o] for o in others], 1)
                ctx = ctx.masked_fill(~keep.unsqueeze(-1), 0.0)
                mask, empty = attention_mask(keep)
                a = self.adapter[m](h[m], mask, empty, src=ctx)
                injected[m] = h[m] + torch.tanh(self.adapter_gate[m]) * (a - h[m])
            h = injected
        feats = []
        for m in self.mods:
            pooled = masked_mean(h[m], obs[m])
            has = obs[m].any(1, keepdim=True)
            feats += [torch.where(has, pooled, self.missing[m].expand_as(pooled)), has.float()]
        z = self.joint(torch.cat(feats, -1))  # (B, d)
        g = torch.softmax(self.gate(z), -1)  # (B, E)
        e = torch.stack([z + f(z) for f in self.experts], 1)  # (B, E, d)
        r = (g.unsqueeze(-1) * e).sum(1)  # (B, d)
        return Output(self.head_output(self.head(r)), {"experts": e, "gates": g, "rep": r})

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        reg = self.regression_loss(out.pred, batch.y)
        inv = self.invariance(out, batch)
        return {"total": reg + self.config.inv_weight * inv, "pred": reg, "invariance": inv}

    def invariance(self, out: Output, batch: Batch) -> torch.Tensor:
        """The invariance term (see the module doc); 0 without domain labels."""
        c = self.config
        zero = out.pred.new_zeros(())
        if c.invariance == "none" or batch.domain is None:
            return zero
        dom = batch.domain.long()
        if int(dom.max()) >= c.domain_slots or int(dom.min()) < 0:
            raise ConfigError(
                f"midg: domain index {int(dom.max())} in the batch; domain_slots={c.domain_slots} "
                f"allows 0..{c.domain_slots - 1} (--set domain_slots=N)")
        if c.invariance == "coral":
            return coral(out.extras["rep"], dom)
        e = grad_reverse(out.extras["experts"], c.grl_alpha)  # (B, E, d)
        if c.invariance == "cdann":
            y = batch.y
            cond = F.one_hot(y.long(), self.out_dim).to(e.dtype) if self.n_classes else y[:, None].to(e.dtype)
            e = torch.cat([e, cond.unsqueeze(1).expand(-1, e.shape[1], -1)], -1)
        logits = self.domain_clf(e)  # (B, E, slots)
        return F.cross_entropy(logits.flatten(0, 1), dom.repeat_interleave(e.shape[1]))


def coral(r: torch.Tensor, dom: torch.Tensor) -> torch.Tensor:
    """Deep CORAL across the domains of a batch: for each domain with >= 2 rows, the squared
    distance of its mean and covariance (Frobenius, / 4 d^2 as Sun & Saenko) to the batch's,
    averaged over those domains; 0 when the batch holds fewer than two domains."""
    doms = [d for d in torch.unique(dom) if int((dom == d).sum()) >= 2]
    if len(doms) < 2:
        return r.new_zeros(())
    mu, cov = r.mean(0), torch.cov(r.T, correction=0)
    terms = []
    for d in doms:
        rd = r[dom == d]
        terms.append(((rd.mean(0) - mu) ** 2).sum()
                     + ((torch.cov(rd.T, correction=0) - cov) ** 2).sum() / (4 * r.shape[1] ** 2))
    return torch.stack(terms).mean()
