"""Instruction checks (cringe.instructions, on if-verifiable's IFEval checkers) and the instruction testbed."""

import itertools
import subprocess
import sys
import textwrap

import pytest

from cringe.errors import UserError

pytestmark = pytest.mark.skipif(sys.version_info < (3, 11), reason="if-verifiable needs Python >= 3.11")

TITLE, NO_COMMA, WORDS = "detectable_format:title", "punctuation:no_comma", "length_constraints:number_words"
QUOTATION, END, BULLETS = "startend:quotation", "startend:end_checker", "detectable_format:number_bullet_lists"


def row(ids, kwargs, key=7, prompt="Write about the sea."):
    return {"key": key, "prompt": prompt, "instruction_id_list": ids, "kwargs": kwargs}


def error_of(rows) -> str:
    from cringe.instructions import validate_rows

    with pytest.raises(UserError) as err:
        validate_rows(rows)
    return str(err.value)


# ----- validation ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"instruction_id_list": TITLE, "kwargs": [{}]}, "field 'instruction_id_list': expected a non-empty list"),
        ({"instruction_id_list": [], "kwargs": []}, "field 'instruction_id_list'"),
        ({"instruction_id_list": ["detectable_format:poem"], "kwargs": [{}]}, "field 'instruction_id_list[0]'"),
        ({"instruction_id_list": [TITLE, NO_COMMA], "kwargs": [{}]}, "field 'kwargs': expected a list of 2 objects"),
        ({"instruction_id_list": [TITLE], "kwargs": "{}"}, "field 'kwargs'"),
        (
            {"instruction_id_list": [TITLE], "kwargs": [{"num_words": 3}]},
            "field 'kwargs[0]' (detectable_format:title): unknown num_words",
        ),
    ],
)
def test_a_malformed_row_is_named_by_row_and_field(bad, says):
    message = error_of([row([TITLE], [{}]), {"key": "k2", "prompt": "x", **bad}])
    assert message.startswith("row 1 (key 'k2'), field") and says in message
    assert "\n" not in message


def test_missing_arguments_are_refused_not_invented():
    message = error_of([row([NO_COMMA, WORDS], [{}, {"num_words": 40}])])
    assert message == (
        "row 0 (key 7), field 'kwargs[1]' (length_constraints:number_words): missing relation "
        "(it takes exactly: num_words, relation)"
    )


@pytest.mark.parametrize(
    "instruction_id, kwargs, says",
    [
        (BULLETS, {"num_bullets": -1}, "cannot use num_bullets=-1"),  # the checker would draw a random count
        ("keywords:letter_frequency", {"letter": "1", "let_frequency": 2, "let_relation": "at least"}, "letter='1'"),
        ("keywords:existence", {"keywords": []}, "keywords must be a non-empty list"),
        (WORDS, {"num_words": "40", "relation": "less than"}, "num_words must be an integer"),
        (WORDS, {"num_words": 40, "relation": "about"}, "relation"),
        ("length_constraints:number_sentences", {"num_sentences": 3, "relation": "less than"}, "punkt"),
        ("change_case:capital_word_frequency", {"capital_frequency": 2, "capital_relation": "at least"}, "punkt"),
    ],
)
def test_arguments_a_checker_would_not_use_as_given_are_refused(instruction_id, kwargs, says):
    message = error_of([row([instruction_id], [kwargs])])
    assert message.startswith("row 0 (key 7), field ") and says in message


def test_none_values_are_dropped_before_the_checker_sees_them():
    from cringe.instructions import check, validate_rows

    # Arrow fills every instruction's dict with every key seen in the column, as None where it does not apply.
    kwargs = [{"num_words": None, "relation": None}, {"num_words": 5, "relation": "less than", "keywords": None}]
    (clean,) = validate_rows([row([TITLE, WORDS], kwargs)])
    assert clean["kwargs"] == [{}, {"num_words": 5, "relation": "less than"}]
    assert check("<<Sea>> waves", [TITLE, WORDS], kwargs) == [True, True]
    assert check("<<Sea>> waves roll in and out all day", [TITLE, WORDS], kwargs) == [True, False]


# ----- checks ----------------------------------------------------------------------------------------------


def test_known_responses_pass_and_fail_known_checks():
    from cringe.instructions import check

    assert check("<<Ode>> the sea", [TITLE, NO_COMMA], [{}, {}]) == [True, True]
    assert check("The sea, the sky", [TITLE, NO_COMMA], [{}, {}]) == [False, False]
    bullets = "* one\n* two\n* three"
    assert check(bullets, [BULLETS], [{"num_bullets": 3}]) == [True]
    assert check(bullets, [BULLETS], [{"num_bullets": 2}], strict=True) == [False]
    assert check(bullets, [BULLETS], [{"num_bullets": 2}]) == [True]  # loose: the last line dropped
    assert check("", [NO_COMMA, WORDS], [{}, {"num_words": 40, "relation": "less than"}]) == [False, False]


def test_loose_forgives_a_leading_line_and_asterisks_strict_does_not():
    from cringe.instructions import check

    quoted = 'Here is my answer:\n"The sea is wide and deep."'
    assert check(quoted, [QUOTATION], [{}], strict=True) == [False]
    assert check(quoted, [QUOTATION], [{}]) == [True]
    bold_end = "The sea is calm. **Any other questions?**"
    assert check(bold_end, [END], [{"end_phrase": "Any other questions?"}], strict=True) == [False]
    assert check(bold_end, [END], [{"end_phrase": "Any other questions?"}]) == [True]


def test_score_is_the_fraction_followed_and_the_label_all_followed_strictly():
    from cringe.instructions import score_rows

    prompt = row([QUOTATION, NO_COMMA, TITLE], [{}, {}, {}])
    answers = ['Sure:\n"<<Sea>> calm water"', '"<<Sea>> calm water"', "calm, water"]
    loose, strict = score_rows([prompt] * 3, answers), score_rows([prompt] * 3, answers, strict=True)
    assert [r["loose"] for r in loose] == [[True, True, True], [True, True, True], [False, False, False]]
    assert [r["strict"] for r in loose] == [[False, True, True], [True, True, True], [False, False, False]]
    assert [r["score"] for r in loose] == [1.0, 1.0, 0.0]
    assert [r["score"] for r in strict] == [pytest.approx(2 / 3), 1.0, 0.0]
    assert [r["label"] for r in loose] == [False, True, False]
    assert loose[0]["key"] == 7 and loose[0]["instruction_id_list"] == [QUOTATION, NO_COMMA, TITLE]


def test_the_length_guard_zeroes_answers_too_short_to_be_answers():
    from cringe.instructions import score_rows

    prompt = row([NO_COMMA, WORDS], [{}, {"num_words": 40, "relation": "less than"}])
    short, full = score_rows([prompt] * 2, ["ok", "the sea is calm today and the boats are out"], min_words=5)
    assert short["strict"] == [True, True] and short["score"] == 0.0 and short["label"] is False
    assert full["score"] == 1.0 and full["label"] is True and full["words"] == 10


def test_four_accuracies_average_over_instructions_not_over_fractions():
    from cringe.instructions import accuracies

    results = [
        {"key": "a", "strict": [True, False], "loose": [True, True]},
        {"key": "a", "strict": [True, True], "loose": [True, True]},
        {"key": "b", "strict": [False], "loose": [True]},
    ]
    acc = accuracies(results)
    assert acc["prompt_level_strict"]["mean"] == pytest.approx(1 / 3)
    assert acc["instruction_level_strict"]["mean"] == pytest.approx(3 / 5)  # the mean of fractions would be 1/2
    assert acc["prompt_level_loose"]["mean"] == acc["instruction_level_loose"]["mean"] == 1.0
    assert acc["instruction_level_strict"]["n"] == 5 and acc["prompt_level_strict"]["n"] == 3
    for a in acc.values():
        assert a["ci_low"] <= a["mean"] <= a["ci_high"]
    # Resampling prompts: drawing prompt a alone gives 3/4, prompt b alone 0.
    assert acc["instruction_level_strict"]["ci_low"] == 0.0 and acc["instruction_level_strict"]["ci_high"] == 0.75


def test_a_missing_package_is_a_user_error_naming_the_extra(monkeypatch):
    from cringe import instructions

    instructions.package.cache_clear()
    for name in [m for m in sys.modules if m.split(".")[0] == "if_verifiable"] + ["if_verifiable"]:
        monkeypatch.setitem(sys.modules, name, None)  # None in sys.modules: that import raises ImportError
    try:
        with pytest.raises(UserError, match=r"the `instructions` extra: pip install 'pairwise-cringe\[instructions\]'"):
            instructions.package()
    finally:
        instructions.package.cache_clear()


def test_no_check_downloads_anything():
    # nltk.download and nltk's data loader raise, and sockets cannot connect: importing the checkers and running
    # every supported one must still work (lm-eval's copy downloads punkt_tab on import).
    script = textwrap.dedent(
        """
        import socket, nltk
        def refuse(*a, **k):
            raise RuntimeError("tried to download")
        nltk.download = nltk.data.load = nltk.data.find = refuse
        socket.socket.connect = refuse
        from cringe.instructions import package, check
        from cringe.testbeds.instructions import make_prompts, SHORT_ANSWER_TYPES
        rows = make_prompts(40, 40, seed=1, types=SHORT_ANSWER_TYPES)
        seen = set()
        for r in rows["train"] + rows["heldout"]:
            check("<<t>> Hello, world.\\n* a\\n* b\\nP.S. [x] *hi* the ocean.", r["instruction_id_list"], r["kwargs"])
            seen.update(r["instruction_id_list"])
        print(len(seen), "length_constraints:number_sentences" in package().registry)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    used, sentences_offered = out.stdout.split()
    assert int(used) >= 12 and sentences_offered == "False"


# ----- the testbed -----------------------------------------------------------------------------------------


def test_the_generator_is_seeded():
    from cringe.testbeds.instructions import make_prompts

    a, b, c = make_prompts(30, 10, seed=3), make_prompts(30, 10, seed=3), make_prompts(30, 10, seed=4)
    assert a == b and a != c
    assert [r["key"] for r in a["train"] + a["heldout"]] == list(range(40))


def test_training_and_held_out_prompts_share_no_topic_and_no_combination():
    from cringe.testbeds.instructions import make_prompts

    sides = make_prompts(300, 100, seed=0)
    topics = {side: {r["topic"] for r in rows} for side, rows in sides.items()}
    combos = {side: {frozenset(r["instruction_id_list"]) for r in rows} for side, rows in sides.items()}
    assert topics["train"].isdisjoint(topics["heldout"]) and len(topics["heldout"]) > 5
    assert combos["train"].isdisjoint(combos["heldout"]) and len(combos["heldout"]) > 20
    sizes = {len(r["instruction_id_list"]) for r in sides["heldout"]}
    assert sizes == {1, 2, 3}


def test_combinations_respect_the_conflict_table():
    from cringe.instructions import package
    from cringe.testbeds.instructions import DEFAULT_TYPES, TESTBED_CONFLICTS, combinations, make_prompts

    conflicts = package().conflicts
    assert "detectable_format:title" in conflicts["startend:quotation"]  # made symmetric from the package's table
    for combo in [tuple(r["instruction_id_list"]) for r in make_prompts(300, 100, seed=0)["train"]]:
        for a, b in itertools.combinations(combo, 2):
            assert b not in conflicts[a] and {a, b} not in TESTBED_CONFLICTS
    assert all(len(set(c)) == len(c) for c in combinations(DEFAULT_TYPES))


def test_rows_are_ifeval_rows_with_a_chat_prompt_the_loop_reads(tokenizer):
    from cringe.data import load_prompts
    from cringe.instructions import validate_rows
    from cringe.testbeds.instructions import make_prompts

    rows = make_prompts(8, 4, seed=0)["heldout"]
    assert validate_rows(rows) == rows
    prompts = load_prompts(rows, tokenizer, max_prompt_length=None)
    assert len(prompts) == 4 and prompts[0].messages[0]["role"] == "system"
    assert rows[0]["prompt"][-1]["content"] in prompts[0].text and rows[0]["topic"] in prompts[0].text


def test_language_checks_are_seeded():
    # langdetect samples n-grams at random: unseeded, a short text's verdict can change from one process to the next.
    import langdetect

    from cringe.instructions import package

    package()
    assert langdetect.DetectorFactory.seed == 0
