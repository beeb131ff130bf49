"""The demo-size ablation's summary.json and plot (docs/img/ablation_demo.png): the rows of 2026-12-01 as reported
(their per-seed results were not kept), the rows run since from their committed per-seed results. Every row that
adapts was adapted with ℓ denoised beside the actions (`repwam_ell` today) except `repwam`, the 2026-12-07 rerun
with ℓ left out of the adaptation (the default since; benchmarks/results/ablation_demo_ell).

    python benchmarks/results/ablation_demo/make_summary.py
"""

import json
from pathlib import Path

from repwam.train.pipeline import ablation_summary, plot_ablation

HERE = Path(__file__).parent
REPORTED = {  # 2026-12-01, 3 seeds each (README); repwam then is repwam_ell now
    "repwam_ell": (0.453, 0.076), "recon": (0.393, 0.042), "joint": (0.553, 0.012), "no_ell": (0.280, 0.020),
    "plain": (0.360, 0.000),
}
summary = {row: {"reported": {"mean": m, "std": s, "seeds": 3}} for row, (m, s) in REPORTED.items()}
summary.update(ablation_summary(HERE, ["vae"], [0, 1, 2]))
ell = ablation_summary(HERE.parent / "ablation_demo_ell", ["repwam", "repwam_ell"], [0, 1, 2])  # 2026-12-07
summary.update({"repwam": ell["repwam"], "repwam_ell rerun": ell["repwam_ell"]})
later = ablation_summary(HERE.parent / "ablation_demo_adapt650", ["repwam", "no_state"], [0, 1, 2])  # ℓ denoised
summary.update({{"repwam": "repwam_ell"}.get(row, row) + " 300+650": v for row, v in later.items()})
order = ["repwam", "repwam_ell", "repwam_ell rerun", "recon", "vae", "no_ell", "joint", "plain", "repwam_ell 300+650",
         "no_state 300+650"]
summary = {row: summary[row] for row in order if row in summary}
(HERE / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
plot_ablation(summary, Path(__file__).parents[3] / "docs" / "img" / "ablation_demo.png",
              title="Demo-size ablation, 3 seeds per row (hatched: 2026-12-01, as reported)")
print(json.dumps({k: v.get("reported", {s: r["mean"] for s, r in v.items()}) for k, v in summary.items()}))
