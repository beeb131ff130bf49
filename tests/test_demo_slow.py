"""`repwam demo` (what `make demo` runs) at the smallest sizes. Slow: select with `pytest -m slow`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_repwam_demo_writes_a_sane_report(tmp_path):
    """`repwam demo` at the smallest sizes: every stage runs, the report exists, embeds everything it shows, and its
    numbers are sane (success rates in [0, 1], finite training losses)."""
    import json
    import math
    import re

    bin_dir = Path(sys.executable).parent
    out = tmp_path / "demo"
    args = [str(bin_dir / "repwam"), "demo", "--out", str(out), "--tasks", "reach-v3,drawer-open-v3",
            "--episodes-per-task", "3", "--tok-steps", "20", "--lat-steps", "20", "--wam-steps", "20",
            "--adapt-steps", "20", "--plain-steps", "20", "--eval-episodes", "1", "--max-steps", "30"]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    page = (out / "report.html").read_text()
    srcs = re.findall(r'src="([^"]+)"', page)
    assert srcs and all(s.startswith("data:") for s in srcs)
    for name in ("wam_repwam_s0", "plain_plain_s0"):
        res = json.loads((out / "eval" / name / "results.json").read_text())
        assert 0 <= res["mean"]["success_rate"] <= 1
        # the result keeps the settings its run trained with (what a rerun checks it against)
        assert (out / "eval" / name / "run.json").read_text() == (out / "runs" / name / "run.json").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in (out / "runs").iterdir():
        ea = EventAccumulator(str(run / "tb"))
        ea.Reload()
        assert all(math.isfinite(e.value) for e in ea.Scalars("train/loss")), run.name
    # a second run reuses every finished stage
    again = subprocess.run(args, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode == 0 and "train tokenizer" not in again.stderr
