"""`<run>/progress.json`: a training run's step and its loop's wall seconds over every sitting, written atomically at
each save. Watchers and the pipeline's timings read it without loading the training state (or torch)."""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_progress(out: str | Path, **progress) -> None:
    tmp = Path(out) / "progress.json.tmp"
    tmp.write_text(json.dumps(progress))
    os.replace(tmp, Path(out) / "progress.json")


def read_progress(out: str | Path) -> dict:
    """A run's progress.json ({} before its first save)."""
    f = Path(out) / "progress.json"
    return json.loads(f.read_text()) if f.exists() else {}
