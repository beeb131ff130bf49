"""The HTML report: built from a run directory's artefacts, self-contained (every picture embedded)."""

from __future__ import annotations

import json
import re

from repwam.eval.report import write_report


def _results(rate: float) -> dict:
    row = lambda r: {"episodes": 10, "successes": int(10 * r), "success_rate": r, "ci95": [max(r - 0.2, 0), min(r + 0.2, 1)],  # noqa: E731
                     "mean_length": 120.0, "infer_ms_mean": 3.0, "infer_ms_p95_worst": 9.0}
    return {"tasks": {"reach-v3": row(rate), "drawer-open-v3": row(1.0)}, "mean": row((rate + 1) / 2)}


def test_report_embeds_everything_and_shows_the_numbers(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for name, rate in (("wam_repwam_s0", 0.6), ("plain_plain_s0", 0.3)):
        (tmp_path / "eval" / name).mkdir(parents=True)
        (tmp_path / "eval" / name / "results.json").write_text(json.dumps(_results(rate)))
    run = tmp_path / "runs" / "wam_repwam_s0"
    w = SummaryWriter(str(run / "tb"))
    for step in range(1, 6):
        w.add_scalar("train/loss", 1.0 / step, step)
        w.add_scalar("val/loss", 1.2 / step, step)
    w.close()
    (run / "run.json").write_text(json.dumps({"command": "train wam", "optim": {"seed": 0}}))
    (tmp_path / "eval_tokenizer").mkdir()
    (tmp_path / "eval_tokenizer" / "table.md").write_text("| tokenizer | PSNR |\n|---|---|\n| tok_default | 22.20 |\n")
    from PIL import Image

    Image.new("RGB", (2176, 384)).save(tmp_path / "eval_tokenizer" / "recon_tok_default.png")  # a wide strip

    page = write_report(tmp_path, title="t", timings={"train-wam_repwam_s0": 120.0, "eval": 60.0},
                        wall_seconds=150.0).read_text()
    assert "3.0 min" in page and "2.5 min" in page, "the sum of the jobs and the run's wall time"
    assert 'style="max-width:none"' in page, "the reconstruction strip keeps its pixel size (scrolls sideways)"
    assert "0.800" in page and "0.650" in page, "both policies' mean success"
    assert "RepWAM (seed 0)" in page and "plain baseline (seed 0)" in page, "policies named for a person"
    assert "22.20" in page and "train-wam_repwam_s0" in page and "seed&quot;: 0" in page
    srcs = re.findall(r'src="([^"]+)"', page)
    assert len(srcs) >= 2 and all(s.startswith("data:") for s in srcs), "no link to a file: everything embedded"
    assert "http" not in page.replace("http-equiv", ""), "no internet"


def test_policy_labels():
    from repwam.eval.report import policy_label

    assert policy_label("wam_repwam_s2") == "RepWAM (seed 2)"
    assert policy_label("plain_plain_s0") == "plain baseline (seed 0)"
    assert policy_label("wam_no_ell_s1") == "WAM, no_ell row (seed 1)"
    assert policy_label("my_eval") == "my_eval"
