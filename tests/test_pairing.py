"""Best-vs-worst pairs, ties and small gaps dropped, truncation handling, binary threshold labels."""

from cringe.generation import Sample
from cringe.loop.pairing import as_training_data, best_only, best_vs_worst, by_threshold


def sample(p, j, ids, reason="stop"):
    return Sample(
        prompt_id=p, sample_id=j, prompt_ids=[1, 2], completion_ids=ids, completion=str(ids), finish_reason=reason
    )


SAMPLES = [
    sample(0, 0, [5]),
    sample(0, 1, [6]),
    sample(0, 2, [7]),  # clear best (6) and worst (7)
    sample(1, 0, [5]),
    sample(1, 1, [6]),  # a tie
    sample(2, 0, [5]),
    sample(2, 1, [6], "length"),
]  # gap 0.5, one truncated
SCORES = [0.5, 0.9, 0.1, 0.3, 0.3, 0.8, 0.3]


def test_best_vs_worst_drops_ties_and_counts():
    rows, report = best_vs_worst(SAMPLES, SCORES)
    assert [r["row"] for r in rows] == [0, 2]
    assert rows[0]["completion_ids"] == [[6], [7]] and rows[0]["chosen_score"] == 0.9
    assert report.prompts == 3 and report.kept == 2 and report.dropped == {"reward gap below min_gap": 1}


def test_min_gap_and_truncated_samples():
    rows, report = best_vs_worst(SAMPLES, SCORES, min_gap=0.6)
    assert [r["row"] for r in rows] == [0]
    rows, report = best_vs_worst(SAMPLES, SCORES, drop_truncated=True)
    assert [r["row"] for r in rows] == [0]
    assert report.dropped["truncated sample"] == 1 and report.dropped["fewer than 2 samples"] == 1


def test_best_only_keeps_each_prompts_best_sample_where_pairs_would_be_kept():
    # Rejection-sampling fine-tuning (`cringe iterate --loss sft`): the winner of each best-vs-worst pair, alone.
    rows, report = best_only(SAMPLES, SCORES)
    pairs, _ = best_vs_worst(SAMPLES, SCORES)
    assert [r["completion_ids"] for r in rows] == [[p["completion_ids"][0]] for p in pairs] == [[[6]], [[5]]]
    assert all(r["label"] is True for r in rows) and report.dropped == {"reward gap below min_gap": 1}
    data = as_training_data(rows, "sft")
    assert data.kind == "binary" and len(data) == 2


def test_threshold_labels_for_binary_cringe():
    rows, report = by_threshold(SAMPLES, SCORES, threshold=0.5)
    assert [r["label"] for r in rows] == [True, True, False, False, False, True, False]
    data = as_training_data(rows, "binary")
    assert data.kind == "binary" and len(data) == 7


def test_pairs_feed_the_collator(tokenizer):
    from cringe.data import Collator

    rows, _ = best_vs_worst(SAMPLES, SCORES)
    batch = Collator(tokenizer.pad_token_id)(as_training_data(rows, "pairwise").rows)
    assert batch["input_ids"].shape[0] == 4 and batch["labels"][0].tolist() == [-100, -100, 6]
