"""Batches for the trainer: pairs as 2B sequences (chosen first), binary rows with their labels, right padding
or one packed row (padding-free); labels mask the prompt and the padding. Pairs may instead share their prompt:
one [prompt | chosen | rejected] segment per pair (cringe.prefix_sharing)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cringe.losses import IGNORE_INDEX
from cringe.prefix_sharing import build_shared_rows


def _pad(sequences: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(s) for s in sequences)
    return torch.tensor([s + [value] * (width - len(s)) for s in sequences], dtype=torch.long)


@dataclass
class Collator:
    """Batches for a causal LM.

    Pairwise rows become 2B sequences: the B chosen first, then the B rejected (one forward pass for both).
    Padded (default): input_ids [S, T], attention_mask [S, T], labels [S, T], right-padded; labels carry
    IGNORE_INDEX on prompt and padding and are aligned with input_ids (the loss shifts them).
    Padding-free (`padding_free=True`): the S sequences are concatenated into one row: input_ids, labels,
    position_ids (restarting at 0 for each sequence, which is how transformers recognises packed sequences and
    keeps attention within each) and seq_id (the sequence of each position), all [1, total]; no attention_mask.
    A prompt always has at least one token, so no counted label is ever predicted across a boundary.
    Prefix-shared (`share_prefix=True`, pairs only): `cringe.prefix_sharing.build_shared_rows`, one row per pair,
    right-padded, or with `padding_free` every pair in one row; no labels, the answer tokens and the positions that
    predict them are listed instead (answer_index, answer_targets, seq_index, in the 2B sequences' order).
    All: num_sequences [] (S), is_positive [S] for binary data, ref_logps [S] when precomputed on the rows.
    """

    pad_token_id: int
    padding_free: bool = False
    share_prefix: bool = False

    def __call__(self, rows: list[dict]) -> dict[str, torch.Tensor]:
        n_completions = len(rows[0]["completion_ids"])
        if self.share_prefix and n_completions == 2:
            batch = build_shared_rows(rows, self.pad_token_id, pack=self.padding_free)
        else:
            batch = self._sequences(rows, n_completions)
        if rows[0].get("label") is not None and n_completions == 1:
            batch["is_positive"] = torch.tensor([bool(r["label"]) for r in rows])
        if "ref_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref_logps"][j] for j in range(n_completions) for r in rows])
        return batch

    def _sequences(self, rows: list[dict], n_completions: int) -> dict[str, torch.Tensor]:
        sequences, label_rows = [], []
        for j in range(n_completions):
            for r in rows:
                prompt, completion = r["prompt_ids"], r["completion_ids"][j]
                sequences.append(prompt + completion)
                label_rows.append([IGNORE_INDEX] * len(prompt) + completion)
        if self.padding_free:
            batch = {
                "input_ids": torch.tensor([[t for s in sequences for t in s]], dtype=torch.long),
                "labels": torch.tensor([[t for s in label_rows for t in s]], dtype=torch.long),
                "position_ids": torch.tensor([[i for s in sequences for i in range(len(s))]], dtype=torch.long),
                "seq_id": torch.tensor([[k for k, s in enumerate(sequences) for _ in s]], dtype=torch.long),
            }
        else:
            batch = {
                "input_ids": _pad(sequences, self.pad_token_id),
                "attention_mask": _pad([[1] * len(s) for s in sequences], 0),
                "labels": _pad(label_rows, IGNORE_INDEX),
            }
        batch["num_sequences"] = torch.tensor(len(sequences))
        return batch
