import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")


@pytest.fixture(scope="session")
def tokenizer():
    from cringe.models import build_tiny_tokenizer

    return build_tiny_tokenizer()


@pytest.fixture
def tiny_model(tokenizer):
    from cringe.models import build_tiny_model

    return build_tiny_model(tokenizer)


def pair_rows(n=16):
    return [{"prompt": f"Q{i}: is it good?", "chosen": " yes, great", "rejected": " no, awful"} for i in range(n)]


def chat(role, content):
    return {"role": role, "content": content}
