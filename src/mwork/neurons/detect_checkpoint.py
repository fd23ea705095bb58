"""Detection checkpoints: what a run has accumulated, saved atomically after whole blocks.

A checkpoint is a safetensors file (the per-neuron document counts) whose header holds the
progress and the settings it was made with, as JSON; nothing is unpickled. A run resumes from
it only with the same settings (by digest) and the same first documents (read again and
hashed); anything else is refused with a sentence saying what differs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from mwork.config import digest
from mwork.files import save_safetensors
from mwork.fingerprints import TextHasher
from mwork.neurons.neuronset import set_path


@dataclass
class Progress:
    """Everything a run has accumulated; what a checkpoint stores."""

    counts: dict[str, torch.Tensor]  # kind -> (layers, n) int32: documents in which the neuron is important
    consumed: int = 0  # documents read (empty and failed included)
    scored: int = 0
    empty: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    unscorable: dict[str, list[int]] = field(default_factory=dict)  # kind -> documents scoring zero everywhere
    corpus_sha256: str = ""  # of the documents consumed so far

    @classmethod
    def start(cls, shapes: Mapping[str, tuple[int, int]]) -> "Progress":
        """Nothing read yet, for kinds of the given (layers, n) shapes."""
        return cls({k: torch.zeros(*s, dtype=torch.int32) for k, s in shapes.items()},
                   unscorable={k: [] for k in shapes})

    def n_docs(self, kind: str) -> int:
        """Documents counted for ``kind``: the scored ones minus those unscorable for it."""
        return self.scored - len(self.unscorable[kind])

    def state(self) -> dict[str, Any]:
        return {"consumed": self.consumed, "scored": self.scored, "empty": self.empty, "failed": self.failed,
                "unscorable": self.unscorable, "corpus_sha256": self.corpus_sha256}


def checkpoint_path_for(out: str | Path) -> Path:
    """``x.safetensors`` -> ``x.checkpoint.safetensors`` (beside the result)."""
    st = set_path(out)
    return st.with_name(st.stem + ".checkpoint.safetensors")


def rank_checkpoint_path(path: str | Path, rank: int, world: int) -> Path:
    """One rank's checkpoint beside ``path``: ``x.checkpoint.safetensors`` ->
    ``x.rank1of2.checkpoint.safetensors`` (``path`` itself for a single process)."""
    path = Path(path)
    if world <= 1:
        return path
    stem = path.name[:-len(".checkpoint.safetensors")] if path.name.endswith(".checkpoint.safetensors") else path.stem
    return path.with_name(f"{stem}.rank{rank}of{world}.checkpoint.safetensors")


def save_checkpoint(path: Path, progress: Progress, settings: Mapping[str, Any]) -> None:
    """Write ``progress`` and the ``settings`` it depends on; atomic: a kill leaves the old
    checkpoint or the new one, never half of one."""
    state = {"settings_sha256": digest(settings), "settings": settings, **progress.state()}
    tensors = {f"count.{k}": v.contiguous() for k, v in progress.counts.items()}
    save_safetensors(path, tensors, metadata={"mwork_checkpoint": json.dumps(state, sort_keys=True)})


def load_checkpoint(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The saved state (JSON) and counts of a checkpoint; a clear error for anything else."""
    unreadable = (f"{path} is not a readable mwork detection checkpoint (truncated or not one); "
                  "delete it or rerun with --no-resume (resume=False)")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        if "mwork_checkpoint" not in header:
            raise ValueError(unreadable)
        state = json.loads(header["mwork_checkpoint"])
        counts = {k[len("count."):]: v for k, v in load_file(str(path)).items()}
    except ValueError:
        raise
    except Exception as err:  # safetensors raises its own error types for a torn or foreign file
        raise ValueError(f"{unreadable} ({type(err).__name__}: {err})") from None
    return state, counts


def _settings_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    return "; ".join(f"{k}: checkpoint {old.get(k)!r} vs now {new.get(k)!r}" for k in keys if old.get(k) != new.get(k))


def resume(path: Path, docs: Iterator[str], hasher: TextHasher, settings: Mapping[str, Any],
           kinds: Sequence[str]) -> Progress:
    """Load ``path``, check it was made with ``settings`` and the same first documents (read
    again from ``docs`` and hashed into ``hasher``), and return its progress."""
    saved, counts = load_checkpoint(path)
    if saved.get("settings_sha256") != digest(settings):
        diff = _settings_diff(saved.get("settings", {}), settings)
        raise ValueError(f"checkpoint {path} was made with other settings ({diff}); "
                         "rerun with the same arguments to resume, or with --no-resume (resume=False) to start over")
    if set(counts) != set(kinds) or set(saved["unscorable"]) != set(kinds):
        raise ValueError(f"checkpoint {path} does not hold the counts of kinds {', '.join(kinds)}; "
                         "rerun with --no-resume to start over")
    for n in range(saved["consumed"]):
        doc = next(docs, None)
        if doc is None:
            raise ValueError(f"checkpoint {path} has read {saved['consumed']} documents but the corpus now has only "
                             f"{n}; rerun with --no-resume to start over")
        hasher.update(doc)
    if hasher.hexdigest() != saved["corpus_sha256"]:
        raise ValueError(f"the first {saved['consumed']} documents differ from those checkpoint {path} was made with; "
                         "rerun with --no-resume to start over")
    return Progress(counts, saved["consumed"], saved["scored"], saved["empty"], saved["failed"],
                    {k: list(saved["unscorable"][k]) for k in kinds}, saved["corpus_sha256"])
