"""Toy rewards for smoke runs of `cringe iterate` on tiny models (reward = a property of the text that a random
model can learn within a few steps)."""


def vowel_share(prompts: list[str], completions: list[str]) -> list[float]:
    """Share of the completion's letters that are vowels (0 for no letters)."""
    out = []
    for text in completions:
        letters = [ch for ch in text.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out


def mean_codepoint(prompts: list[str], completions: list[str]) -> list[float]:
    """Mean Unicode code point of the completion / 1000: a reward with (almost) no ties, for tests that need
    every prompt to give a pair."""
    return [sum(map(ord, text)) / len(text) / 1000 if text else 0.0 for text in completions]


def prompts(n: int = 16) -> list[dict]:
    return [{"prompt": f"Say something nice about item {i}:"} for i in range(n)]


POSITIVE = {
    "good",
    "great",
    "love",
    "lovely",
    "wonderful",
    "beautiful",
    "happy",
    "enjoy",
    "enjoyed",
    "best",
    "excellent",
    "amazing",
    "fun",
    "kind",
    "warm",
    "delightful",
    "brilliant",
    "nice",
    "fantastic",
    "glad",
}
NEGATIVE = {
    "bad",
    "worst",
    "awful",
    "boring",
    "hate",
    "terrible",
    "sad",
    "poor",
    "dull",
    "ugly",
    "horrible",
    "waste",
    "annoying",
    "angry",
    "disappointing",
    "weak",
    "mess",
    "stupid",
    "fail",
    "failed",
}


def lexicon_positivity(prompts: list[str], completions: list[str]) -> list[float]:
    """(positive - negative words) per word of the completion, from two small word lists: a cheap, fully
    transparent reward for smoke runs of the iterative loop on a real model."""
    out = []
    for text in completions:
        words = [w.strip(".,!?;:\"'()").lower() for w in text.split()]
        words = [w for w in words if w]
        score = sum(w in POSITIVE for w in words) - sum(w in NEGATIVE for w in words)
        out.append(score / len(words) if words else 0.0)
    return out


TOPICS = [
    "a rainy afternoon",
    "the new neighbours",
    "a long train ride",
    "my first job",
    "a small bakery",
    "the city park",
    "an old bicycle",
    "a school concert",
    "a family dinner",
    "the local library",
    "a camping trip",
    "a broken umbrella",
    "a football match",
    "a museum visit",
    "the morning commute",
    "a birthday party",
    "a crowded market",
    "a quiet beach",
    "a cooking class",
    "a snowy morning",
    "a hotel room",
    "a mountain hike",
    "a street musician",
    "a garden",
    "the last exam",
    "a road trip",
    "a coffee shop",
    "a science fair",
    "a wedding",
    "a moving day",
    "a late flight",
    "a village festival",
]


def topic_prompts(n: int = 32, template: str = "Write one sentence about {topic}.") -> list[dict]:
    """Conversational prompts asking for one sentence about everyday topics."""
    return [
        {
            "prompt": [
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": template.format(topic=TOPICS[i % len(TOPICS)])},
            ]
        }
        for i in range(n)
    ]
