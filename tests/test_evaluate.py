"""Win rate (AlpacaEval convention) with its interval, and the text metrics, against plain computations."""

import math

import pytest
import torch

from cringe.evaluate import (
    distinct_n,
    kl_estimate,
    pooled_mean,
    repeated_ngram_rate,
    text_metrics,
    win_outcomes,
    win_rate,
    win_rate_from_outcomes,
)


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


def test_win_outcomes_average_samples_per_prompt_and_refuse_different_prompts():
    from types import SimpleNamespace as S

    policy = [S(prompt_id=i) for i in (2, 2, 0, 1)]
    base = [S(prompt_id=i) for i in (0, 1, 2)]
    # prompt 0: 5 vs 4 win; prompt 1: 1 vs 1 tie; prompt 2: mean(0, 3)=1.5 vs 2 loss
    assert win_outcomes(policy, [0, 3, 5, 1], base, [4, 1, 2]) == [1.0, 0.5, 0.0]
    with pytest.raises(ValueError, match="different prompts"):
        win_outcomes(policy[:3], [0, 3, 5], base, [4, 1, 2])


def test_pooled_mean_widens_with_disagreeing_runs_and_reduces_to_the_prompt_bootstrap():
    one = pooled_mean([[1, 0, 1, 1, 0, 1, 0, 1]], seed=0)
    plain = win_rate_from_outcomes([1, 0, 1, 1, 0, 1, 0, 1], seed=0)
    assert one["mean"] == pytest.approx(plain["win_rate"]) and one["n_runs"] == 1 and one["n"] == 8
    assert one["ci_high"] - one["ci_low"] == pytest.approx(plain["ci_high"] - plain["ci_low"], abs=0.07)
    agree = pooled_mean([[1, 0] * 20, [0, 1] * 20, [1, 0] * 20], seed=0)
    disagree = pooled_mean([[1] * 30 + [0] * 10, [1] * 20 + [0] * 20, [1] * 10 + [0] * 30], seed=0)
    assert agree["mean"] == pytest.approx(0.5) and disagree["mean"] == pytest.approx(0.5)
    assert disagree["per_run"] == pytest.approx([0.75, 0.5, 0.25])
    # the same number of values per run, but runs that disagree: the interval must be wider
    assert disagree["ci_high"] - disagree["ci_low"] > 1.5 * (agree["ci_high"] - agree["ci_low"])
    assert pooled_mean([[1, 0, 1], [0, 0]], seed=3) == pooled_mean([[1, 0, 1], [0, 0]], seed=3)  # seeded
    with pytest.raises(ValueError):
        pooled_mean([[1], []])


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


class S:
    def __init__(self, prompt_id, completion="a b c", finish_reason="stop"):
        self.prompt_id, self.completion, self.finish_reason = prompt_id, completion, finish_reason
        self.num_tokens = len(completion.split())


def test_compare_averages_samples_per_prompt_and_is_seeded():
    from cringe.evaluate import compare

    policy = [S(0), S(0), S(1), S(1)]
    baseline = [S(0), S(1)]
    # prompt 0: policy mean 0.5 vs 0.4 (win); prompt 1: mean 0.2 vs 0.2 (tie)
    result = compare(
        policy,
        [0.2, 0.8, 0.1, 0.3],
        baseline,
        [0.4, 0.2],
        policy_logps=[-1.0, -2.0, -3.0, -4.0],
        reference_logps=[-2.0, -2.0, -3.0, -5.0],
        seed=3,
    )
    assert result["n_prompts"] == 2 and result["win_rate"]["win_rate"] == pytest.approx(0.75)
    assert result["reward"]["mean"] == pytest.approx(0.35) and result["baseline_reward"]["n"] == 2
    assert result["kl"]["mean"] == pytest.approx(0.5) and result["text"]["length_tokens"] == 3
    assert compare(policy, [0.2, 0.8, 0.1, 0.3], baseline, [0.4, 0.2], seed=3)["kl"] is None
    again = compare(
        policy,
        [0.2, 0.8, 0.1, 0.3],
        baseline,
        [0.4, 0.2],
        policy_logps=[-1.0, -2.0, -3.0, -4.0],
        reference_logps=[-2.0, -2.0, -3.0, -5.0],
        seed=3,
    )
    assert again == result


def test_compare_refuses_different_prompt_sets():
    from cringe.evaluate import compare

    with pytest.raises(ValueError, match="different prompts"):
        compare([S(0)], [1.0], [S(1)], [0.0])


def test_cringe_evaluate_compares_a_trained_round_with_the_start(tmp_path, capsys):
    import json

    from cringe.cli import main
    from cringe.loop.run import IterativeRun, load_config

    from .test_loop import write_config

    path = write_config(tmp_path, tmp_path / "run", rounds=1)
    IterativeRun(load_config(str(path), [])).run()
    reward = tmp_path / "reward.yaml"
    reward.write_text('type: callable\nfunction: "cringe.testbeds.toy:vowel_share"\n')
    out = tmp_path / "eval.json"
    main(
        [
            "evaluate",
            "--policy",
            str(tmp_path / "run" / "round-1" / "model"),
            "--baseline",
            "tiny-random-llama",
            "--prompts",
            str(tmp_path / "prompts.jsonl"),
            "--reward",
            str(reward),
            "--samples",
            "2",
            "--max-new-tokens",
            "8",
            "--output",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["win_rate"]["n"] == 12 and 0 <= result["win_rate"]["win_rate"] <= 1
    assert result["kl"]["n"] == 24 and result["kl"]["mean"] > 0
    # the same schema as the loop's eval.json (less the round)
    loop_eval = json.loads((tmp_path / "run" / "round-1" / "eval.json").read_text())
    assert set(loop_eval) - {"round"} == set(result)
    assert "win rate of policy vs baseline" in capsys.readouterr().out
    # One evaluation pipeline: with the loop's settings, `cringe evaluate` computes the loop's own eval.json.
    main(
        [
            "evaluate",
            "--policy",
            str(tmp_path / "run" / "round-1" / "model"),
            "--baseline",
            "tiny-random-llama",
            "--prompts",
            str(tmp_path / "prompts.jsonl"),
            "--reward",
            str(reward),
            "--max-new-tokens",
            "12",
            "--output",
            str(out),
        ]
    )
    same = json.loads(out.read_text())
    assert same["win_rate"] == loop_eval["win_rate"] and same["kl"] == loop_eval["kl"]


def test_completion_log_probs_never_form_the_full_logits_and_match_a_plain_forward(tokenizer, monkeypatch):
    # Every evaluation runs two of these passes (policy and start model); only completion positions need the head.
    from cringe import chunked as C
    from cringe.evaluate import sequence_logprobs
    from cringe.models import build_tiny_model

    model = build_tiny_model(tokenizer)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size
    rows = [
        {
            "prompt_ids": torch.randint(3, vocab, (p,), generator=g).tolist(),
            "completion_ids": [torch.randint(3, vocab, (c,), generator=g).tolist()],
        }
        for p, c in [(3, 5), (7, 1), (2, 9), (5, 4), (4, 4)]
    ]
    head_positions = []
    handle = model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: head_positions.append(args[0].shape[-2])
    )
    fused = sequence_logprobs(model, rows, tokenizer.pad_token_id, batch_size=3)
    handle.remove()
    assert head_positions and max(head_positions) == 0  # the LM head module never saw a position
    monkeypatch.setattr(C, "chunked_unsupported_reason", lambda m: "forced: the plain path")
    plain = sequence_logprobs(model, rows, tokenizer.pad_token_id, batch_size=3)
    with torch.no_grad():  # one row at a time, no padding: the textbook sum of log-softmax at completion tokens
        reference = []
        for r in rows:
            ids = torch.tensor([r["prompt_ids"] + r["completion_ids"][0]])
            logps = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            counted = torch.arange(len(targets)) >= len(r["prompt_ids"]) - 1
            reference.append(logps[counted].gather(-1, targets[counted, None]).sum().item())
    assert fused == pytest.approx(reference, abs=1e-4)
    assert plain == pytest.approx(reference, abs=1e-4)
    assert fused == pytest.approx(plain, abs=1e-5)
