"""Where prompts come from at scale: a Hub dataset's named split, and preference rows read for their prompts.

* `NAME:SPLIT` names one split of a `datasets` dataset anywhere a data source is taken, e.g.
  `HuggingFaceH4/ultrafeedback_binarized:train_gen` or `...:test_gen[:500]` (the `datasets` slice syntax). Hub ids
  cannot contain a colon, so the suffix is never part of a name.
* `prompt_rows`: loading *prompts* from preference rows needs neither side's answer. UltraFeedback's rows (a text
  `prompt`, conversational `chosen`/`rejected` that repeat the user turn) put the prompt in the shared prefix of
  chosen and rejected, and a pair whose two sides are equal has no shared-prefix prompt at all (cringe.data refuses
  it as a pair); as a prompt source its prompt is `chosen` before the final assistant turn, as a conversation, so
  the policy's chat template renders it.
"""

from __future__ import annotations

from typing import Any


def split_source(source: str) -> tuple[str, str | None]:
    """('NAME', 'SPLIT') from 'NAME:SPLIT'; (source, None) when it names no split (a local path, a plain name)."""
    name, sep, split = source.partition(":")
    if not sep or not name or not split or "/" in split or "\\" in split:
        return source, None
    return name, split


def instruction_text(row: dict) -> str:
    """An AlpacaEval/AlpacaFarm row's prompt: the instruction, and its `input` after a blank line when not empty
    (AlpacaFarm's formatting)."""
    extra = row.get("input")
    return row["instruction"] + (f"\n\n{extra}" if isinstance(extra, str) and extra.strip() else "")


def _columns(rows) -> set[str]:
    if hasattr(rows, "column_names"):
        return set(rows.column_names)
    return {key for row in rows for key in row}


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and isinstance(value[0], dict) and "role" in value[0]


def prompt_rows(rows):
    """Rows as prompt sources: conversational pairs without a conversational `prompt` column become
    {prompt: chosen before its last assistant turn} (tools kept); AlpacaEval/AlpacaFarm rows (instruction, output)
    become a user turn; anything else is returned as it is."""
    columns = _columns(rows)
    if {"instruction", "output"} <= columns and "output_1" not in columns:
        # AlpacaEval / AlpacaFarm evaluation rows: the instruction (and its input) is the user's turn.
        return [{"prompt": [{"role": "user", "content": instruction_text(r)}]} for r in rows]
    if "chosen" not in columns or "instruction" in columns or len(rows) == 0:
        return rows
    first = rows[0]
    if not _is_chat(first.get("chosen")) or _is_chat(first.get("prompt")):
        return rows
    out = []
    for row in rows:
        chosen = row.get("chosen")
        if _is_chat(chosen) and chosen[-1].get("role") == "assistant":
            chosen = chosen[:-1]
        out.append({"prompt": chosen, **({"tools": row["tools"]} if row.get("tools") is not None else {})})
    return out
