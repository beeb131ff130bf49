"""repwam.eval: evaluation of each stage on held-out episodes."""

from __future__ import annotations

import json
from pathlib import Path


def save_results(results: list[dict], path: str | Path) -> None:
    """Write evaluation results as JSON (creating the directory)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(results, indent=1))
