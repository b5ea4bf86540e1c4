"""The instruction-following testbed: IFEval-style prompts generated offline, checked by IFEval's verifiers.

A prompt is built as IFEval's were: a task template about a topic, followed by one to three verifiable
instructions in the checkers' own wording (`build_description`), each with its arguments. Combinations never
pair instructions that the package's conflict table (`INSTRUCTION_CONFLICTS`) keeps apart. Training and
held-out prompts share neither a topic nor a combination of instruction types, so a held-out gain is a gain on
requests the policy was not trained on, not a memorised pairing. The generator is seeded; rows are in IFEval's
format (`key`, `instruction_id_list`, `kwargs`) with `prompt` as chat messages, which `cringe.data.load_prompts`
reads as a conversational prompt (the extra columns ride along), plus `topic` and `task`.

Only instruction types a short answer can satisfy are offered (`SHORT_ANSWER_TYPES`); `DEFAULT_TYPES` are those
the start model sometimes follows and sometimes does not, measured in `bench/research/instructions_start.py`,
which also chose `MAX_NEW_TOKENS`, `SAMPLES_PER_PROMPT` and the length guard `MIN_WORDS`.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Sequence
from pathlib import Path

from cringe.durable.files import write_jsonl
from cringe.instructions import package, validate_rows

SYSTEM = "You are a helpful assistant."

# Each asks for a short answer: with open-ended tasks ("a short blog post", "three facts") the start model wrote
# past 128 new tokens in 54% of its answers, and past 256 in 34% (bench/results/instructions_start-*).
TASKS = (
    "Write a short paragraph about {topic}.",
    "Describe {topic} in two or three sentences.",
    "Explain {topic} to a ten-year-old in a few sentences.",
    "Write a brief note about {topic}.",
    "Give a friend one piece of advice about {topic}, briefly.",
    "Write a brief announcement for a newsletter about {topic}.",
    "Tell me two interesting facts about {topic}.",
    "Write a two-sentence description of a book about {topic}.",
)

# The last word of each topic is its keyword (keywords:frequency asks for it; keywords:forbidden_words bans it).
TOPICS = (
    "the ocean", "morning coffee", "city bicycles", "winter weather", "house plants", "public libraries",
    "learning a language", "healthy sleep", "old maps", "space telescopes", "honey bees", "mountain hiking",
    "board games", "street food", "solar power", "jazz music", "train travel", "garden tomatoes", "night skies",
    "school lunches", "rainy days", "paper books", "city parks", "ancient pyramids", "volcanoes", "penguins",
    "chess", "bread baking", "desert plants", "river fishing", "public transport", "photography", "the moon",
    "tea", "recycling", "birthday parties", "wild horses", "snow", "kites", "lighthouses", "music lessons",
    "camping", "clocks", "dolphins", "museums", "bridges", "sunflowers", "robots", "cooking pasta",
    "autumn leaves", "running shoes", "video calls", "farmers markets", "thunderstorms", "owls", "coral reefs",
    "trains", "handwriting", "cheese", "windmills",
)  # fmt: skip

END_PHRASES = ("Any other questions?", "Is there anything else I can help with?", "That is all.")
POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
SECTION_SPLITTERS = ("Section", "SECTION", "Part")


def topic_keyword(topic: str) -> str:
    return topic.split()[-1]


def _arguments(instruction_id: str, topic: str, rng: random.Random) -> dict:
    """Arguments for one instruction, drawn from `rng`; the ranges keep each satisfiable in a short answer."""
    word_list = package().word_list
    draw = {
        "keywords:existence": lambda: {
            "keywords": rng.sample([w for w in word_list if w != topic_keyword(topic)], rng.choice((1, 2)))
        },
        "keywords:frequency": lambda: {
            "keyword": topic_keyword(topic),
            "frequency": rng.choice((2, 3)),
            "relation": "at least",
        },
        "keywords:forbidden_words": lambda: {"forbidden_words": [topic_keyword(topic)]},
        "length_constraints:number_words": lambda: rng.choice(
            (
                {"num_words": rng.choice((30, 40, 50)), "relation": "less than"},
                {"num_words": 20, "relation": "at least"},
            )
        ),
        "length_constraints:number_paragraphs": lambda: {"num_paragraphs": 2},
        "detectable_content:number_placeholders": lambda: {"num_placeholders": rng.choice((1, 2))},
        "detectable_content:postscript": lambda: {"postscript_marker": rng.choice(POSTSCRIPT_MARKERS)},
        "detectable_format:number_bullet_lists": lambda: {"num_bullets": rng.choice((2, 3))},
        "detectable_format:number_highlighted_sections": lambda: {"num_highlights": rng.choice((1, 2))},
        "detectable_format:multiple_sections": lambda: {
            "section_spliter": rng.choice(SECTION_SPLITTERS),
            "num_sections": 2,
        },
        "startend:end_checker": lambda: {"end_phrase": rng.choice(END_PHRASES)},
    }
    return draw[instruction_id]() if instruction_id in draw else {}


# Satisfiable within about a hundred words. Left out: number_sentences and capital_word_frequency (their checkers
# need a download), response_language and
# english_capital (a 135M model answers in English, in mixed case), two_responses and repeat_prompt (double the
# answer), constrained_response and json_format (they conflict with almost everything, and a fixed sentence or
# an empty object satisfies them), letter_frequency and nth_paragraph_first_word (tests of counting, not of
# following a request).
SHORT_ANSWER_TYPES = (
    "detectable_format:title",
    "change_case:english_lowercase",
    "punctuation:no_comma",
    "length_constraints:number_words",
    "keywords:existence",
    "keywords:frequency",
    "keywords:forbidden_words",
    "startend:end_checker",
    "startend:quotation",
    "detectable_content:postscript",
    "detectable_content:number_placeholders",
    "detectable_format:number_bullet_lists",
    "detectable_format:number_highlighted_sections",
    "detectable_format:multiple_sections",
    "length_constraints:number_paragraphs",
)
# The start model, 48 held-out prompts x 8 samples (bench/results/instructions_start-2026-12-03-*-xeon.md): strict
# rates per type from 8% (end phrase, keywords, no commas) to 77-88% (word counts, placeholders); quotation marks
# 0 of 96 in three runs, so no pair of samples ever differs on it: left out of the defaults.
DEFAULT_TYPES = tuple(t for t in SHORT_ANSWER_TYPES if t != "startend:quotation")
SIZE_WEIGHTS = (0.5, 0.3, 0.2)  # prompts with 1, 2, 3 instructions

# Sampling for this testbed, from the same measurements. With the brief tasks, 128 new tokens end 67% of the
# answers (median 83 tokens); 256 ended only 66% of the open-ended ones, at twice the time. With 8 samples, 25% of
# prompts still have all samples tied on the loose fraction. The length guard (score_rows' min_words) zeroes
# answers of fewer than 10 words, 3% of the start model's: checks of form alone would reward them.
MAX_NEW_TOKENS = 128
SAMPLES_PER_PROMPT = 8
MIN_WORDS = 10

# Pairs the package's table allows that no response can satisfy here: both keyword checks use the topic's word;
# an end phrase cannot close a response wrapped in quotation marks; the section marker is matched case-sensitively.
TESTBED_CONFLICTS = (
    {"keywords:frequency", "keywords:forbidden_words"},
    {"startend:end_checker", "startend:quotation"},
    {"change_case:english_lowercase", "detectable_format:multiple_sections"},
)


def combinations(types: Sequence[str], max_size: int = 3) -> list[tuple[str, ...]]:
    """Every combination of 1..max_size distinct types with no two in conflict (the package's table and
    `TESTBED_CONFLICTS`), each sorted."""
    conflicts = package().conflicts
    unknown = [t for t in types if t not in conflicts]
    if unknown:
        raise ValueError(f"not supported instruction types: {unknown}")
    return [
        combo
        for size in range(1, max_size + 1)
        for combo in itertools.combinations(sorted(set(types)), size)
        if not any(b in conflicts[a] or {a, b} in TESTBED_CONFLICTS for a, b in itertools.combinations(combo, 2))
    ]


def _split(items: list, heldout_fraction: float, rng: random.Random) -> tuple[list, list]:
    items = list(items)
    rng.shuffle(items)
    cut = max(1, round(len(items) * heldout_fraction))
    return items[cut:], items[:cut]


def make_prompts(
    n_train: int,
    n_heldout: int,
    *,
    seed: int = 0,
    types: Sequence[str] = DEFAULT_TYPES,
    size_weights: Sequence[float] = SIZE_WEIGHTS,
    heldout_fraction: float = 0.25,
) -> dict[str, list[dict]]:
    """{"train": rows, "heldout": rows}: topics and instruction combinations are split first, each side's prompts
    drawn from its own. Within a side, no prompt text repeats."""
    rng = random.Random(seed)
    train_topics, heldout_topics = _split(TOPICS, heldout_fraction, rng)
    train_combos: dict[int, list] = {}
    heldout_combos: dict[int, list] = {}
    by_size: dict[int, list] = {}
    for combo in combinations(types, len(size_weights)):
        by_size.setdefault(len(combo), []).append(combo)
    for size, combos in sorted(by_size.items()):
        if len(combos) < 2:
            continue  # one combination cannot be on both sides
        train_combos[size], heldout_combos[size] = _split(combos, heldout_fraction, rng)
    sides = {
        "train": (n_train, train_topics, train_combos, 0),
        "heldout": (n_heldout, heldout_topics, heldout_combos, n_train),
    }
    out = {}
    for side, (n, topics, combos, first_key) in sides.items():
        sizes = [s for s in range(1, len(size_weights) + 1) if combos.get(s)]
        weights = [size_weights[s - 1] for s in sizes]
        rows, seen = [], set()
        for _ in range(50 * n):
            if len(rows) == n:
                break
            combo = rng.choice(combos[rng.choices(sizes, weights)[0]])
            topic, task = rng.choice(topics), rng.choice(TASKS)
            row = prompt_row(first_key + len(rows), task, topic, combo, rng)
            text = row["prompt"][-1]["content"]
            if text not in seen:
                seen.add(text)
                rows.append(row)
        if len(rows) < n:
            raise ValueError(f"only {len(rows)} distinct {side} prompts could be made, {n} requested")
        out[side] = validate_rows(rows)
    return out


def prompt_row(key: int, task: str, topic: str, combo: Sequence[str], rng: random.Random) -> dict:
    """The request, then each instruction in the checker's own wording, as a chat prompt with a short system
    message (SmolLM2's template otherwise injects a long default one)."""
    registry = package().registry
    kwargs, descriptions = [], []
    combo = rng.sample(list(combo), len(combo))  # the order in the request varies; the combination is the set
    for instruction_id in combo:
        args = _arguments(instruction_id, topic, rng)
        descriptions.append(registry[instruction_id](instruction_id).build_description(**args))
        kwargs.append(args)
    user = " ".join([task.format(topic=topic), *descriptions])
    return {
        "key": key,
        "prompt": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}],
        "instruction_id_list": list(combo),
        "kwargs": kwargs,
        "topic": topic,
        "task": task,
    }


def write_prompt_file(rows: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(path, rows)
    return path
