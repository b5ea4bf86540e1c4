"""`train_reward_model`: a one-logit reward model from `text,label` rows (binary cross-entropy) or pairwise rows
(Bradley-Terry), trained with transformers' Trainer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, Trainer, TrainingArguments

from cringe.errors import UserError


def train_reward_model(
    rows: Sequence[dict],
    base_model: str,
    output_dir: str,
    *,
    epochs: float = 1.0,
    learning_rate: float = 5e-5,
    batch_size: int = 32,
    max_length: int = 256,
    seed: int = 0,
    truncation_side: str = "right",
    trust_remote_code: bool = False,
    **training_kwargs,
) -> str:
    """Fine-tune a one-logit sequence classifier as a reward model and save it to `output_dir`.

    rows: {"text", "label": bool} (binary cross-entropy on the logit) or {"chosen", "rejected"} texts
    (Bradley-Terry: -log sigmoid(r_chosen - r_rejected)). truncation_side 'left' keeps the end of long texts
    (where reviews state their verdict); it is saved with the tokenizer, so scoring truncates the same way.
    Returns output_dir.
    """

    if not rows:
        raise UserError("no rows to train the reward model on")
    pairwise = "chosen" in rows[0]
    for i, row in enumerate(rows):
        fields = ("chosen", "rejected") if pairwise else ("text", "label")
        for f in fields:
            if f not in row:
                raise UserError(f"row {i}, field '{f}': missing")
        if not pairwise and not isinstance(row["label"], bool):
            raise UserError(f"row {i}, field 'label': expected a boolean, got {row['label']!r}")
    tokenizer = AutoTokenizer.from_pretrained(base_model, trust_remote_code=trust_remote_code)
    tokenizer.truncation_side = truncation_side
    model = AutoModelForSequenceClassification.from_pretrained(
        base_model, num_labels=1, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id

    def collate(batch):
        if pairwise:
            texts = [r["chosen"] for r in batch] + [r["rejected"] for r in batch]
            enc = tokenizer(texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
            return dict(enc)
        enc = tokenizer(
            [r["text"] for r in batch], truncation=True, max_length=max_length, padding=True, return_tensors="pt"
        )
        return {**enc, "labels": torch.tensor([float(r["label"]) for r in batch])}

    class RewardTrainer(Trainer):
        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels", None)
            rewards = model(**inputs).logits[:, 0].float()
            if pairwise:
                half = rewards.shape[0] // 2
                loss = -torch.nn.functional.logsigmoid(rewards[:half] - rewards[half:]).mean()
            else:
                loss = torch.nn.functional.binary_cross_entropy_with_logits(rewards, labels.float())
            return (loss, {"rewards": rewards}) if return_outputs else loss

    args = TrainingArguments(
        output_dir=output_dir,
        num_train_epochs=epochs,
        learning_rate=learning_rate,
        per_device_train_batch_size=batch_size,
        remove_unused_columns=False,
        seed=seed,
        save_strategy="no",
        report_to="none",
        logging_steps=20,
        **training_kwargs,
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=list(rows), data_collator=collate)
    trainer.train()
    trainer.save_model(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
