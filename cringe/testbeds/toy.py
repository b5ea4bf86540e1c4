"""Toy rewards for smoke runs of `cringe iterate` on tiny models (reward = a property of the text that a random
model can learn within a few steps)."""


def vowel_share(prompts: list[str], completions: list[str]) -> list[float]:
    """Share of the completion's letters that are vowels (0 for no letters)."""
    out = []
    for text in completions:
        letters = [ch for ch in text.lower() if ch.isalpha()]
        out.append(sum(ch in "aeiou" for ch in letters) / len(letters) if letters else 0.0)
    return out


def prompts(n: int = 16) -> list[dict]:
    return [{"prompt": f"Say something nice about item {i}:"} for i in range(n)]
