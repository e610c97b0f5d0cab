"""Which checkpoint the demo's BUILD starts from, decided before anything runs.

The tutorial's BUILD names no base model, so the server's default applies
(THANOSQL_BASE_MODEL, else facebook/wav2vec2-base-960h). Offline, with nothing cached, that
cannot work: the demo says so plainly and how to fix it, and only when asked
(`--small-checkpoint`) trains from a small random checkpoint instead, labelled as such.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

SMALL_CHECKPOINT_DIR = "checkpoints/wav2vec2-tiny-random"


@dataclass(frozen=True)
class BaseCheckpoint:
    source: str          # a folder or hub id, handed to the server as THANOSQL_BASE_MODEL
    random: bool = False
    note: str = ""       # what the user should know about it
    reason: str = ""     # why the pretrained one was not used


class NoCheckpoint(Exception):
    """No pretrained checkpoint is reachable and no fallback was allowed."""


def choose(data_dir: Path, base_model: str | None = None, allow_small: bool = False) -> BaseCheckpoint:
    with warnings.catch_warnings():  # in a notebook, tqdm.auto (under transformers) warns on stderr
        warnings.filterwarnings("ignore", message="IProgress not found")
        return _choose(data_dir, base_model, allow_small)


def _choose(data_dir: Path, base_model: str | None, allow_small: bool) -> BaseCheckpoint:
    from ml.checkpoints import locate
    from ml.errors import CheckpointUnavailable
    from ml.options import default_base_model

    wanted = base_model or default_base_model()
    try:
        source, local = locate(wanted)
        where = "a local folder" if os.path.isdir(source) else \
            "the Hugging Face cache" if local else "the Hugging Face hub (downloaded on first use)"
        return BaseCheckpoint(wanted, note=f"pretrained checkpoint {wanted} from {where}")
    except CheckpointUnavailable as exc:
        reason = str(exc)
    if not allow_small:
        raise NoCheckpoint(
            f"No pretrained checkpoint is available, so BUILD MODEL cannot fine-tune one.\n{reason}\n"
            "To run the tutorial anyway on a small RANDOMLY INITIALISED checkpoint (it trains and "
            "predicts end to end, but its transcripts are garbage), rerun with --small-checkpoint.")
    folder = Path(data_dir) / SMALL_CHECKPOINT_DIR
    if not (folder / "config.json").is_file():
        from ml.checkpoints import make_random_checkpoint
        make_random_checkpoint(folder, size="tiny")
    return BaseCheckpoint(
        str(folder), random=True,
        note=f"SMALL RANDOM CHECKPOINT at {folder} (about 2M parameters, never trained on speech), "
             f"because {wanted} is not available. The tutorial runs end to end, but the transcripts "
             "will be garbage and WER near 1.0",
        reason=reason)
