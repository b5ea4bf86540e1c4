"""Win rate (AlpacaEval convention) with its interval, and the text metrics, against plain computations."""

import math

import pytest

from cringe.evaluate import distinct_n, kl_estimate, repeated_ngram_rate, text_metrics, win_rate, win_rate_from_outcomes


def test_win_rate_counts_ties_as_half_and_reports_sem_and_ci():
    policy = [3, 1, 2, 5, 5, 0, 4, 4]
    baseline = [1, 1, 3, 4, 2, 1, 4, 0]
    outcomes = [1, 0.5, 0, 1, 1, 0, 0.5, 1]
    got = win_rate(policy, baseline, seed=0)
    mean = sum(outcomes) / 8
    sem = math.sqrt(sum((o - mean) ** 2 for o in outcomes) / 7 / 8)
    assert got["win_rate"] == pytest.approx(mean) and got["sem"] == pytest.approx(sem) and got["n"] == 8
    assert got["ci_low"] < mean < got["ci_high"]
    assert got["ci_high"] - got["ci_low"] == pytest.approx(2 * 1.96 * sem, rel=0.25)  # bootstrap ~ normal here
    assert win_rate(policy, baseline, seed=0) == got  # seeded


def test_win_rate_edges():
    assert win_rate([1, 1], [1, 1])["win_rate"] == 0.5
    assert win_rate_from_outcomes([1.0] * 5)["ci_low"] == 1.0
    with pytest.raises(ValueError):
        win_rate([1], [1, 2])
    with pytest.raises(ValueError):
        win_rate([], [])


def test_text_metrics():
    texts = ["the cat sat", "the cat the cat the cat", ""]
    assert distinct_n(texts, 1) == pytest.approx(3 / 9)
    assert distinct_n(texts, 2) == pytest.approx(3 / 7)  # (the cat), (cat sat), (cat the) of 7
    # second text: 4 trigrams, 2 distinct -> 0.5; first: 1 trigram, 0 repeated
    assert repeated_ngram_rate(texts, 3) == pytest.approx(0.25)
    m = text_metrics(texts, [3, 6, 0], ["stop", "length", "stop"])
    assert m["length_tokens"] == 3 and m["truncated_rate"] == pytest.approx(1 / 3)


def test_kl_estimate_is_mean_log_ratio():
    got = kl_estimate([-1.0, -2.0, -3.0], [-2.0, -2.5, -3.0])
    assert got["mean"] == pytest.approx(0.5) and got["n"] == 3
