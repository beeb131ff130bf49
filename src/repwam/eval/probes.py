"""Linear probes: how much of a quantity a representation holds, as held-out R² (split by episode)."""

from __future__ import annotations

import numpy as np

# Named groups of the Meta-World 39-d observation used as probe targets (see repwam.data.sim.OBS_NAMES).
STATE_GROUPS: dict[str, list[int]] = {
    "hand": [0, 1, 2],
    "gripper": [3],
    "object": [4, 5, 6],
    "goal": [36, 37, 38],
}


def ridge_probe(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                alphas=(1e-1, 1e0, 1e1, 1e2, 1e3, 1e4)) -> tuple[np.ndarray, np.ndarray]:
    """Standardised ridge regression (alpha by efficient leave-one-out CV on train). Returns (R² per target, val prediction).

    Targets that are constant on the validation set get R² = nan (nothing to explain).
    """
    from sklearn.linear_model import RidgeCV
    from sklearn.metrics import r2_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y_mean, y_std = y_train.mean(0), y_train.std(0) + 1e-8
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=alphas))
    model.fit(x_train.astype(np.float64), (y_train - y_mean) / y_std)
    pred = model.predict(x_val.astype(np.float64)) * y_std + y_mean
    r2 = r2_score(y_val, pred, multioutput="raw_values")
    r2[y_val.std(0) < 1e-6] = np.nan
    return r2, pred


def grouped_r2(r2: np.ndarray, groups: dict[str, list[int]], names_index: list[int] | None = None) -> dict[str, float]:
    """Mean R² per named group of target columns (indices into the probed columns' source), and over all."""
    pos = {c: i for i, c in enumerate(names_index)} if names_index is not None else None
    out = {}
    for g, cols in groups.items():
        vals = [r2[pos[c] if pos else c] for c in cols]
        vals = [v for v in vals if np.isfinite(v)]
        out[g] = float(np.mean(vals)) if vals else float("nan")
    finite = r2[np.isfinite(r2)]
    out["mean"] = float(finite.mean()) if finite.size else float("nan")
    return out
