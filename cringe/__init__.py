"""pairwise-cringe: Pairwise Cringe, binary Cringe, DPO and iterative preference training for causal LMs."""

try:
    from importlib.metadata import PackageNotFoundError, version

    __version__ = version("pairwise-cringe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
