"""Is what a run left on disk whole? The checks resume makes before it trusts (skips) a finished step.

Files written through cringe.durable.files are complete by construction; what can still be damaged is what a person or a
failing disk touched afterwards, and what other code writes in place: model folders (several files) and the
Trainer's checkpoints (written file by file, trainer_state.json last). A damaged file is reported by name
(DamagedFileError) or, where redoing it is cheap and exact (a sampling shard, a checkpoint), silently redone;
it is never used. Weights are safetensors only: loading a pickle (pytorch_model.bin) runs code from the file.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import struct
from pathlib import Path

from cringe.durable.files import DamagedFileError, read_json
from cringe.errors import UserError

logger = logging.getLogger(__name__)

PICKLE_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
NOT_WEIGHTS = {"training_args.bin"}  # the Trainer's pickled arguments, saved beside every model; never loaded
SAFETENSORS_INDEX = "model.safetensors.index.json"


def check_safetensors(path: Path) -> None:
    """The file holds its whole header and every byte the header points to (a cut file is shorter)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise DamagedFileError(f"{path}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8:
            raise DamagedFileError(f"{path}: truncated safetensors file (header of {n} bytes, file of {size})")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise DamagedFileError(f"{path}: damaged safetensors header") from None
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if size < 8 + n + end:
        raise DamagedFileError(f"{path}: truncated safetensors file ({size} of {8 + n + end} bytes)")


def refuse_pickle_only(folder: Path) -> list[Path]:
    """The folder's safetensors files; a folder with pickle weights only is refused, naming them."""
    folder = Path(folder)
    weights = sorted(folder.glob("*.safetensors"))
    if not weights:
        pickles = sorted(
            p.name for pattern in PICKLE_WEIGHTS for p in folder.glob(pattern) if p.name not in NOT_WEIGHTS
        )
        if pickles:
            raise UserError(
                f"{folder}: weights only as pickle files ({', '.join(pickles)}); cringe loads "
                "safetensors only (a pickle can run code when loaded): convert a copy you trust with "
                "save_pretrained(..., safe_serialization=True)"
            )
    return weights


def check_model_dir(folder: Path) -> None:
    """A saved model folder is whole: config.json, and every safetensors file (the index's shards) complete."""
    folder = Path(folder)
    if not (folder / "config.json").exists():
        raise DamagedFileError(f"{folder}: no config.json (the model folder is incomplete)")
    weights = refuse_pickle_only(folder)
    index = folder / SAFETENSORS_INDEX
    if index.exists():
        shards = sorted(set(read_json(index).get("weight_map", {}).values()))
        missing = [s for s in shards if not (folder / s).exists()]
        if missing:
            raise DamagedFileError(f"{folder / missing[0]}: missing (listed in {index.name})")
        weights = [folder / s for s in shards]
    if not weights:
        raise DamagedFileError(f"{folder}: no weights (no *.safetensors file)")
    for w in weights:
        check_safetensors(w)


def finished(path: Path) -> bool:
    """Whether a step's output exists and is whole, so resume may skip the step. A folder (a round's model) is
    checked; a file exists only complete (atomic writes), and its reader names it if it was damaged since."""
    path = Path(path)
    if not path.exists():
        return False
    if path.is_dir():
        try:
            check_model_dir(path)
        except DamagedFileError as err:
            raise DamagedFileError(f"{err}; delete {path} and rerun to redo that step") from None
    return True


def shard_is_complete(path: Path, rows: int) -> bool:
    """A sampling shard that exists, reads as JSON line by line and holds `rows` rows. Anything else (damaged
    since it was written) is logged and reported incomplete, so the shard is sampled again: seeded by position,
    it comes out as it was."""
    path = Path(path)
    if not path.exists():
        return False
    try:
        text = path.read_text(encoding="utf-8")
        lines = [line for line in text.splitlines() if line.strip()]
        for line in lines:
            json.loads(line)
        if len(lines) == rows and text.endswith("\n"):
            return True
        problem = f"{len(lines)} rows, {rows} expected"
    except (ValueError, UnicodeDecodeError) as err:
        problem = f"not valid JSON lines ({type(err).__name__})"
    logger.warning("%s is damaged (%s): sampling that shard again", path, problem)
    return False


_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_is_complete(folder: Path) -> bool:
    """The Trainer writes trainer_state.json last: a checkpoint without it (or with it cut) was interrupted.
    Weights are not required at the top level (FSDP and DeepSpeed keep theirs in sub-folders); those there are
    checked."""
    try:
        json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
        for w in folder.glob("*.safetensors"):
            check_safetensors(w)
        return True
    except (OSError, ValueError, DamagedFileError):
        return False


def last_complete_checkpoint(folder: Path) -> Path | None:
    """The Trainer checkpoint to resume from: the highest step (numerically: checkpoint-10 is after checkpoint-9)
    whose files are complete. Incomplete ones after it are removed, so the Trainer never writes into a
    half-written folder."""
    folder = Path(folder)
    found = sorted(
        ((int(m.group(1)), p) for p in folder.glob("checkpoint-*") if p.is_dir() and (m := _CHECKPOINT.match(p.name))),
        reverse=True,
    )
    for _, path in found:
        if checkpoint_is_complete(path):
            return path
        logger.warning("%s is incomplete (interrupted while saved): removed", path)
        shutil.rmtree(path, ignore_errors=True)
    return None
