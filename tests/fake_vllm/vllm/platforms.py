"""vllm.platforms.current_platform: the fake stands for a GPU engine unless FAKE_VLLM_PLATFORM=cpu."""

import os


class _Platform:
    def is_cpu(self) -> bool:
        return os.environ.get("FAKE_VLLM_PLATFORM") == "cpu"


current_platform = _Platform()
