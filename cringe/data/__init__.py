"""Datasets in the formats TRL users already have: validation, tokenisation and collation.

Accepted row formats, detected from the columns in this order (values are strings, or lists of chat messages for
conversational data; columns a format does not name are ignored):

    alpacafarm         instruction, input, output_1, output_2, preference   (preference 1 or 2)
    pairwise           prompt, chosen, rejected
    binary             prompt, completion, label     (label: bool, True = good)
    implicit pairwise  chosen, rejected              (the prompt is the shared prefix, as TRL extracts it)
    prompt-completion  prompt, completion            (SFT only)
    messages           messages                      (SFT only; a conversation)
    text               text                          (SFT only; plain language modelling)
    prompt-only        prompt                        (for generation in the iterative loop)

What each loss takes: the pairwise losses (Pairwise Cringe, the DPO family) need pairs (pairwise, implicit,
alpacafarm); binary Cringe takes binary rows, or pairs as chosen = good and rejected = bad; SFT takes every format
but prompt-only (pairs: the chosen side; binary: the good completions).

TRL's conventions, followed exactly where they exist:
  * A `prompt` column next to `chosen`/`rejected` is used only when it is conversational exactly when `chosen` is
    (trl.data_utils.maybe_extract_prompt). Otherwise, as in HuggingFaceH4/ultrafeedback_binarized (a string
    `prompt`, message lists `chosen`/`rejected` that repeat the user turn, and `prompt_id`, `messages`,
    `score_*` columns), the prompt is the shared prefix of chosen and rejected (trl.data_utils.extract_prompt) and
    the `prompt` column is not read. One difference: where one side is a prefix of the other, TRL's extraction
    returns an arbitrary split; here the row is invalid ("nothing left to compare").
  * SFT, prompt-completion: the loss is on the completion only (TRL's `completion_only_loss`, its default for this
    format). `messages`: the last message must be the assistant's; it is the completion, and everything before it
    (earlier assistant turns included) is the prompt. That is prompt-completion applied to a conversation, and a
    deliberate difference from TRL, whose default trains on every token of the conversation (user turns too) and
    whose `assistant_only_loss=True` trains on every assistant turn but needs `{% generation %}` markers in the
    template: here the loss is on the answer the model is asked to produce, with any chat template. `text`: every
    token is trained (TRL's language modelling); the prompt is the tokenizer's own start tokens, or its BOS (else
    EOS) when it adds none, so that the first token has a position to be predicted from.

Chat messages need `role` and `content` (`content` may be None on an assistant message that has `tool_calls`).
Every other field (`tool_calls`, `name`, `tool_call_id`, ...) is passed to the chat template as it is; a field the
template does not render is an error naming the row, column and message, never a silent drop. A field whose value
is None is absent: Arrow gives every message each key that any message in the column has. A `tools` column is
passed to the chat template as `tools=`, under the same rule.

Every row is validated before any tokenisation or training: a bad row stops everything with an error naming
its index and field, or, with `on_invalid="skip"`, is dropped and counted.

Tokenisation policy (the same for every format):
  * prompt and completion are tokenised separately, so the boundary between them is exact by construction
    and matches generation, where completion tokens follow the prompt's;
  * conversational rows are rendered with the tokenizer's chat template; the completion is what the full
    conversation adds after the prompt rendered with `add_generation_prompt=True`;
  * EOS ends every completion exactly once (appended unless the rendered completion already ends with it);
  * a prompt longer than `max_prompt_length` is an error (or skipped): cutting it would silently change the task;
  * a completion longer than `max_completion_length` is cut at the end, and a cut completion has no EOS,
    so the model is never taught to stop where the text did not stop.

Large datasets: a `datasets.Dataset` of `MAP_MIN_ROWS` rows or more (Parquet, CSV, a hub dataset, a JSON file of
`ARROW_JSON_MIN_BYTES` or more), or any Dataset when `num_proc` is given, is validated and then tokenised with
`Dataset.map(batched=True, num_proc=...)`: the same rows, token ids and errors as the per-row path, in parallel,
and cached next to the dataset's own cache files under a fingerprint of the dataset, the tokenizer, the settings
and this file's source, so a second run with the same inputs reads the result back instead of recomputing it.
"""

from cringe.data.collate import Collator
from cringe.data.formats import (
    FORMATS,
    KINDS,
    DataValidationError,
    Example,
    ValidationReport,
    column_names,
    detect_format,
    load_rows,
    prompt_rows,
    split_source,
    validate,
)
from cringe.data.tokenize import (
    PreparedData,
    Prompt,
    auto_num_proc,
    completion_token_ids,
    load_prompts,
    prepare,
    prompt_token_ids,
    tokenize_examples,
)

__all__ = [
    "Collator",
    "FORMATS",
    "KINDS",
    "DataValidationError",
    "Example",
    "ValidationReport",
    "column_names",
    "detect_format",
    "load_rows",
    "prompt_rows",
    "split_source",
    "validate",
    "PreparedData",
    "Prompt",
    "auto_num_proc",
    "completion_token_ids",
    "load_prompts",
    "prepare",
    "prompt_token_ids",
    "tokenize_examples",
]
