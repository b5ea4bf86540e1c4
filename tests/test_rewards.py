"""Reward sources: Python callables, a sequence-classification reward model (and its training), and the
pairwise LLM judge against a local OpenAI-compatible server started on 127.0.0.1."""

import json
import logging
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from cringe.errors import UserError
from cringe.rewards import CallableReward, PairwiseJudge, RewardModel, load_reward_source, train_reward_model


def lengths(prompts, completions):
    return [float(len(c)) for c in completions]


def wrong_count(prompts, completions):
    return [1.0]


def test_callable_by_name_and_checks():
    r = CallableReward("cringe.testbeds.toy:vowel_share")
    assert r.score(["p", "p"], ["aaa", "xyz"]) == [1.0, 0.0]
    assert CallableReward(lengths).score(["p"], ["abcd"]) == [4.0]
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        CallableReward(wrong_count).score(["p", "q"], ["a", "b"])
    with pytest.raises(ValueError, match="non-finite"):
        CallableReward(lambda p, c: [float("nan")] * len(c)).score(["p"], ["a"])
    with pytest.raises(ValueError, match="module:function"):
        CallableReward("no_colon_here")


def tiny_classifier(tokenizer, path=None):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        num_labels=1,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(config)
    if path:
        model.save_pretrained(path)
        tokenizer.save_pretrained(path)
    return model


def test_reward_model_scores_in_batches(tokenizer):
    rm = RewardModel(tiny_classifier(tokenizer), tokenizer, batch_size=2, max_length=16, input="completion")
    texts = ["good", "bad", "a much longer completion than the rest", "ok"]
    scores = rm.score(["p"] * 4, texts)
    assert len(scores) == 4 and len(set(scores)) > 1
    single = [rm.score(["p"], [t])[0] for t in texts]
    assert scores == pytest.approx(single, abs=1e-5)  # batching and padding do not change a score


def test_train_reward_model_learns_labels(tmp_path, tokenizer):
    base = tmp_path / "base"
    tiny_classifier(tokenizer, base)
    rows = [
        {"text": t, "label": good} for _ in range(16) for t, good in (("lovely great", True), ("awful dull", False))
    ]
    out = train_reward_model(
        rows,
        str(base),
        str(tmp_path / "rm"),
        epochs=3,
        learning_rate=3e-3,
        batch_size=8,
        use_cpu=True,
        disable_tqdm=True,
    )
    rm = load_reward_source({"type": "model", "path": out, "input": "completion"})
    good, bad = rm.score(["", ""], ["lovely great", "awful dull"])
    assert good > bad
    with pytest.raises(ValueError, match="row 0, field 'label'"):
        train_reward_model([{"text": "x", "label": 1}], str(base), str(tmp_path / "rm2"))


def reward_stand_in(seed=0):
    from cringe.standins import build_model, build_reward_tokenizer

    rtok = build_reward_tokenizer()
    return build_model("tiny-qwen3", rtok, classifier=True, seed=seed), rtok


CONVERSATIONS = [
    ("Name a colour.", "Blue."),
    ([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two plus two?"}], "Four, of course."),
    ("Write a haiku about rain.", "Rain on the tin roof\nsoft drums for a sleepy town\nthe gutters applaud"),
    ("Hi", "Hello! How can I help you today? " * 3),
    ("Why is the sky blue?", "Rayleigh scattering."),
]


def reference_score(model, rtok, prompt, completion, system=None):
    """The straight way, one conversation at a time, no padding: the model card's recipe."""
    messages = [{"role": "system", "content": system}] if system else []
    messages += [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    text = rtok.apply_chat_template(messages + [{"role": "assistant", "content": completion}], tokenize=False)
    ids = rtok(text, add_special_tokens=False)["input_ids"]
    assert ids.count(rtok.bos_token_id) == 1 and ids[0] == rtok.bos_token_id
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0, 0].item(), ids


def test_reward_model_scores_the_conversation_with_its_own_tokenizer(tokenizer):
    model, rtok = reward_stand_in()
    prompts, completions = zip(*CONVERSATIONS)
    reference = [reference_score(model, rtok, p, c) for p, c in CONVERSATIONS]
    # The policy's tokenizer gives other ids for the same text: scoring with it would be silently wrong.
    assert (
        tokenizer("Blue.", add_special_tokens=False)["input_ids"]
        != rtok("Blue.", add_special_tokens=False)["input_ids"]
    )
    by_batch = {}
    for batch_size in (1, 2, 8):
        rm = RewardModel(model, rtok, batch_size=batch_size)  # input auto: the tokenizer has a chat template
        assert rm.input == "conversation"
        assert [rm.token_ids(p, c) for p, c in CONVERSATIONS] == [ids for _, ids in reference]  # one BOS each
        by_batch[batch_size] = rm.score(list(prompts), list(completions))
    assert len(set(by_batch[1])) == len(CONVERSATIONS)
    for batch_size, scores in by_batch.items():
        assert scores == pytest.approx([s for s, _ in reference], abs=1e-5), batch_size


def test_reward_model_system_prompt_and_left_truncation():
    model, rtok = reward_stand_in()
    rm = RewardModel(model, rtok, system="You are a judge.")
    ids = rm.token_ids("Q?", "A.")
    assert ids == reference_score(model, rtok, "Q?", "A.", system="You are a judge.")[1]
    long_answer = "x" * 200 + " the verdict is at the end"
    full = RewardModel(model, rtok).token_ids("Q?", long_answer)
    cut = RewardModel(model, rtok, max_length=40)
    kept = cut.token_ids("Q?", long_answer)
    assert len(kept) == 40 and cut.truncated == 1
    assert kept[0] == rtok.bos_token_id and kept[1:] == full[-39:]  # the answer's end survives, BOS too


def test_reward_model_spec_is_checked_before_loading(tmp_path):
    from cringe.rewards import check_reward_spec

    with pytest.raises(UserError, match=r"unknown keys \['max_len'\]"):
        load_reward_source({"type": "model", "path": str(tmp_path / "absent"), "max_len": 512})
    with pytest.raises(UserError, match="input must be one of"):
        check_reward_spec({"type": "model", "path": "rm", "input": "chat"})
    with pytest.raises(UserError, match=r"missing path"):
        check_reward_spec({"type": "model", "input": "conversation"})
    with pytest.raises(UserError, match="unknown keys"):
        check_reward_spec({"type": "judge", "base_url": "http://x/v1", "model": "m", "temperature": 0})
    assert (
        check_reward_spec(
            {"type": "model", "path": "rm", "input": "conversation", "system": "s", "batch_size": 8, "max_length": 4096}
        )
        == "model"
    )
    model, rtok = reward_stand_in()
    rtok.chat_template = None
    with pytest.raises(UserError, match="needs a tokenizer with a chat template"):
        RewardModel(model, rtok, input="conversation")
    assert RewardModel(model, rtok).input == "prompt+completion"


# ----- the judge against a local server ----------------------------------------------------------------------


class JudgeServer:
    """An OpenAI-compatible /chat/completions endpoint on 127.0.0.1 whose answers a test scripts."""

    def __init__(self, answer):
        self.answer, self.requests, self.auth, self.bodies = answer, [], [], []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body["messages"][0]["content"])
                outer.bodies.append(body)
                outer.auth.append(self.headers.get("Authorization"))
                status, content = outer.answer(body["messages"][0]["content"], len(outer.requests))
                if status == "sleep":
                    time.sleep(content)
                    status, content = 200, "A"
                choice = {"message": {"role": "assistant", "content": content}}
                if isinstance(content, dict):  # {token: logprob}: the first token's alternatives
                    choice = {
                        "message": {"role": "assistant", "content": max(content, key=content.get)},
                        "logprobs": {
                            "content": [{"top_logprobs": [{"token": t, "logprob": lp} for t, lp in content.items()]}]
                        },
                    }
                payload = json.dumps({"choices": [choice]}).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def prefers_good(content, _):
    a = content.split("Response A:\n")[1].split("\n\nResponse B:")[0]
    return 200, "A" if "GOOD" in a else "B"


def test_judge_asks_both_orders_and_cancels_position_bias(monkeypatch, caplog):
    monkeypatch.setenv("TEST_JUDGE_KEY", "sk-secret-123")
    with JudgeServer(prefers_good) as url:
        judge = PairwiseJudge(url, "m", api_key_env="TEST_JUDGE_KEY", concurrency=2, backoff=0.01)
        assert judge.compare(["q1", "q2"], ["GOOD one", "bad"], ["bad", "GOOD two"]) == [1.0, 0.0]
        server_requests = judge.stats.requests
    assert server_requests == 4
    with JudgeServer(lambda c, n: (200, "A")) as url:  # a judge that always says A: pure position bias
        judge = PairwiseJudge(url, "m", api_key_env="TEST_JUDGE_KEY", backoff=0.01)
        with caplog.at_level(logging.DEBUG):
            assert judge.compare(["q"], ["x"], ["y"]) == [0.5]
    assert "sk-secret-123" not in caplog.text


def test_judge_round_robin_scores():
    with JudgeServer(prefers_good) as url:
        judge = PairwiseJudge(url, "m", backoff=0.01)
        scores = judge.score(["p", "p", "p", "other"], ["GOOD a", "bad", "bad too", "alone"])
    assert scores == [1.0, 0.25, 0.25, 0.5]


def test_judge_retries_429_then_succeeds():
    with JudgeServer(lambda c, n: (429, "") if n == 1 else prefers_good(c, n)) as url:
        judge = PairwiseJudge(url, "m", concurrency=1, backoff=0.01)
        assert judge.compare(["q"], ["GOOD"], ["bad"]) == [1.0]
    assert judge.stats.retries == 1 and judge.stats.failed_requests == 0


def test_judge_counts_malformed_answers_and_never_coerces_them():
    with JudgeServer(lambda c, n: (200, "Both are fine, really.")) as url:
        judge = PairwiseJudge(url, "m", backoff=0.01)
        assert judge.compare(["q"], ["a"], ["b"]) == [None]
    assert judge.stats.invalid_answers == 2 and judge.stats.undecided_pairs == 1
    # one valid order is used alone
    with JudgeServer(lambda c, n: (200, "A") if n == 1 else (200, "???")) as url:
        judge = PairwiseJudge(url, "m", concurrency=1, backoff=0.01)
        assert judge.compare(["q"], ["a"], ["b"]) == [1.0]


def test_judge_reads_the_first_word_and_refuses_a_mostly_unreadable_round(caplog):
    from cringe.rewards import JudgeUnreadableError, read_text_verdict

    assert [read_text_verdict(a) for a in ("A", "B.", "**A**", "Response B", "A: A\n", "B is better")] == [
        1.0,
        0.0,
        1.0,
        0.0,
        1.0,
        0.0,
    ]
    assert [read_text_verdict(a) for a in ("You're a helpful", "a", "Both", "Answer: A", "AB")] == [None] * 5
    answers = iter(["A", "You're a helpful", "B", "???"] * 10)
    with JudgeServer(lambda c, n: (200, next(answers))) as url:
        judge = PairwiseJudge(url, "m", concurrency=1, backoff=0.01)
        with caplog.at_level(logging.INFO):
            judge.score(["p", "p", "p"], ["x", "y", "z"])  # 3 pairs, 6 answers, 3 unreadable: at the limit
        assert "6 answers, 3 unreadable" in caplog.text
        judge = PairwiseJudge(url, "m", concurrency=1, backoff=0.01, max_invalid=0.25)
        with pytest.raises(JudgeUnreadableError, match=r"neither response in \d+ of 6 answers .*verdict: choice"):
            judge.score(["p", "p", "p"], ["x", "y", "z"])


def test_judge_verdicts_constrained_or_from_logprobs():
    """choice: the request asks the server to constrain the answer to A or B; logprobs: P(A) / (P(A) + P(B)) of the
    first token, averaged over both orders."""
    server = JudgeServer(lambda c, n: (200, "A"))
    with server as url:
        PairwiseJudge(url, "m", backoff=0.01, verdict="choice").compare(["q"], ["x"], ["y"])
    assert [b["structured_outputs"] for b in server.bodies] == [{"choice": ["A", "B"]}] * 2

    def logprobs(content, _):  # P(A) 0.8 when the GOOD response is shown as A, 0.3 when it is shown as B
        p_a = 0.8 if "GOOD" in content.split("Response A:\n")[1].split("\n\nResponse B:")[0] else 0.3
        return 200, {"A": math.log(p_a), " B": math.log(1 - p_a), "Sure": -6.0}

    server = JudgeServer(logprobs)
    with server as url:
        judge = PairwiseJudge(url, "m", backoff=0.01, verdict="logprobs")
        [result] = judge.compare(["q"], ["GOOD"], ["bad"])
    assert result == pytest.approx((0.8 + 0.7) / 2)
    assert all(b["logprobs"] is True and b["max_tokens"] == 1 for b in server.bodies)
    assert judge.stats.invalid_answers == 0 and judge.stats.answers == 2
    with pytest.raises(UserError, match="verdict"):
        PairwiseJudge("http://127.0.0.1:9/v1", "m", verdict="vibes")


def prefers_longer(content, _):
    a = content.split("Response A:\n")[1].split("\n\nResponse B:")[0]
    b = content.split("\n\nResponse B:\n")[1].split("\n\nAnswer with")[0]
    return 200, "A" if len(a) > len(b) else "B"


def test_judge_position_consistency_is_counted_and_logged(caplog):
    """Consistency: the pairs whose two orders prefer the same response; first position: the answers naming A."""
    with JudgeServer(prefers_longer) as url:
        judge = PairwiseJudge(url, "m", concurrency=1, backoff=0.01)
        with caplog.at_level(logging.INFO):
            scores = judge.score(["p"] * 4, ["ab", "abcd", "a", "abc"])
    assert scores == pytest.approx([1 / 3, 1.0, 0.0, 2 / 3])
    s = judge.stats
    assert (s.both_orders, s.consistent_pairs, s.named_first, s.named_second) == (6, 6, 6, 6)
    assert s.position_consistency == 1.0 and s.first_position_share == 0.5
    assert "position consistency 6 of 6 pairs (100%), the first position named in 6 of 12 answers (50%)" in caplog.text
    # prefers_good says B to two bad responses in both orders: one pair of three is inconsistent
    with JudgeServer(prefers_good) as url:
        judge = PairwiseJudge(url, "m", concurrency=1, backoff=0.01)
        judge.score(["p"] * 3, ["GOOD a", "bad", "bad too"])
    assert judge.stats.as_dict() | {"requests": 0} == {
        "answers": 6,
        "requests": 0,
        "retries": 0,
        "invalid_answers": 0,
        "failed_requests": 0,
        "undecided_pairs": 0,
        "cached": 0,
        "skipped": 0,
        "named_first": 2,
        "named_second": 4,
        "both_orders": 3,
        "consistent_pairs": 2,
        "position_consistency": 2 / 3,
        "first_position_share": 1 / 3,
    }


@pytest.mark.parametrize("verdict", ["text", "choice"])
def test_a_judge_that_always_names_a_is_refused_in_one_line(verdict, caplog):
    from cringe.rewards import JudgePositionBiasError

    with JudgeServer(lambda c, n: (200, "A")) as url:
        judge = PairwiseJudge(url, "m", concurrency=2, backoff=0.01, verdict=verdict)
        with pytest.raises(JudgePositionBiasError) as refused, caplog.at_level(logging.INFO):
            judge.score(["p"] * 4 + ["q"] * 2, ["w", "x", "y", "z", "u", "v"])  # 7 pairs, 14 answers
        message = str(refused.value)
        assert "\n" not in message
        assert "named the first (A) position in 14 of 14 answers (more than max_position_bias 90%" in message
        assert "position consistency 0 of 7 pairs (0%)" in message and "try verdict: logprobs" in message
        assert "position consistency 0 of 7 pairs (0%)" in caplog.text  # logged before the refusal
        # accepted on request: every score is the 0.5 both orders cancel to
        judge = PairwiseJudge(url, "m", backoff=0.01, verdict=verdict, max_position_bias=1)
        assert judge.score(["p"] * 4, ["w", "x", "y", "z"]) == [0.5] * 4
        # too few answers to tell a biased judge from chance: not refused
        assert PairwiseJudge(url, "m", backoff=0.01, verdict=verdict).score(["p"] * 3, ["w", "x", "y"]) == [0.5] * 3
    with pytest.raises(UserError, match="max_position_bias"):
        PairwiseJudge(url, "m", max_position_bias=0.3)


def test_judge_position_consistency_from_logprobs():
    """logprobs: an answer names A when P(A) > 0.5. A judge whose P(A) moves with the responses counts as
    consistent; one whose P(A) stays above 0.5 whatever it is shown is refused, and told to get a stronger judge."""
    from cringe.rewards import JudgePositionBiasError

    def graded(p_good_shown_a, p_good_shown_b):
        def answer(content, _):
            p_a = (
                p_good_shown_a
                if "GOOD" in content.split("Response A:\n")[1].split("\n\nResponse B:")[0]
                else p_good_shown_b
            )
            return 200, {"A": math.log(p_a), "B": math.log(1 - p_a)}

        return answer

    completions = ["GOOD", "bad", "bad too", "GOOD too"]
    with JudgeServer(graded(0.8, 0.3)) as url:
        judge = PairwiseJudge(url, "m", backoff=0.01, verdict="logprobs")
        judge.score(["p"] * 4, completions)
    s = judge.stats
    # GOOD against bad: P(A) 0.8 then 0.3, both prefer GOOD (4 pairs); GOOD against GOOD and bad against bad:
    # 0.8 (or 0.3) in both orders, the same position twice (2 pairs)
    assert (s.both_orders, s.consistent_pairs) == (6, 4) and (s.named_first, s.named_second) == (6, 6)
    with JudgeServer(graded(0.9, 0.85)) as url:
        judge = PairwiseJudge(url, "m", backoff=0.01, verdict="logprobs")
        with pytest.raises(JudgePositionBiasError, match=r"12 of 12 answers .*about 0.5; try a stronger judge model"):
            judge.score(["p"] * 4, completions)
    assert judge.stats.position_consistency == 0.0 and judge.stats.first_position_share == 1.0


def test_a_judge_spec_is_checked_when_read():
    with pytest.raises(UserError, match="base_url"):
        load_reward_source({"type": "judge", "model": "m"})
    with pytest.raises(UserError, match=r"unknown keys \['temprature'\]"):
        load_reward_source({"type": "judge", "base_url": "http://127.0.0.1:9/v1", "model": "m", "temprature": 0})


def test_judge_timeout_is_retried_then_reported():
    with JudgeServer(lambda c, n: ("sleep", 1.0)) as url:
        judge = PairwiseJudge(url, "m", timeout=0.2, max_retries=1, backoff=0.01, concurrency=1)
        t0 = time.time()
        assert judge.compare(["q"], ["a"], ["b"]) == [None]
        assert time.time() - t0 < 5
    assert judge.stats.failed_requests == 2 and judge.stats.retries == 2
