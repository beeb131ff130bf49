"""`repwam train estimator`: fit the state estimator (`repwam.policy.estimator`) by ridge regression, cross-fitted.

Closed form, no training loop: the teacher's features of every frame (the tokenizer's cached alignment targets,
`<data>/cache/teacher/...`, computed when missing; several views' side by side) are standardised, and a ridge map to
the simulator observation (`observation.environment_state`, normalised per dimension, std floored) is fitted on every
`frame_stride`-th frame
(the latent-frame boundaries a WAM's state token reads, by default), one map per task (`per_task`). Each output
dimension's ridge strength is picked by K-fold cross-validation over episodes (folds stratified by task), and every
frame of every episode is also predicted by the fold that did not see its episode: those *cross-fitted* estimates are
what a WAM adapts on (`--state-key observation.estimated_state --estimator DIR`), so that its state token carries, in
training, errors like the ones the deployed estimator makes on new layouts, not the near-perfect fit of the
estimator's own training frames. With `targets="positions"` the objects' orientations are not estimated (held at
their median): see EstimatorTrainConfig.targets.

Saved to `<out>` (atomic): config.json (the teacher, camera, tasks, the fit report), model.safetensors (scaler and
maps), estimates.safetensors (the cross-fitted estimates of each dataset, (num_frames, D) float32) and fit.json (the
chosen strengths, cross-validated normalised MSE and RMSE per dimension; for Meta-World, errors in cm per task).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from repwam.checkpoint import read_config, weights_hash
from repwam.data.lerobot import LeRobotDataset, camera_key
from repwam.errors import RepwamError
from repwam.eval.probes import STATE_GROUPS
from repwam.policy.estimator import EstimatorConfig, StateEstimator
from repwam.serve import ENV_STATE_KEY
from repwam.tokenizer.teachers import build_teacher, teacher_options
from repwam.tokenizer.tokenize import teacher_cache
from repwam.wam.data import ENV_STATE_MIN_STD

POSITIONS = {k: STATE_GROUPS[k] for k in ("hand", "object", "goal")}  # the 3-D positions of Meta-World's observation
# Meta-World's 39-d observation: hand 0:3, gripper 3, object 4:7 + its quaternion 7:11, a second object 11:14 + 14:18,
# the previous frame's 18:36, the goal 36:39. The orientations are what `targets="positions"` leaves out.
ORIENTATION_DIMS = (*range(7, 11), *range(14, 18), *range(25, 29), *range(32, 36))
TARGETS = ("all", "positions")


@dataclass
class EstimatorTrainConfig:
    camera: str = "corner3"  # the view(s) it reads, comma-separated (Meta-World camera names or feature keys)
    teacher: str = "efficientnet-lite0"
    teacher_layer: str | None = "stage5"
    teacher_input_size: int | None = 128
    grid: tuple[int, int] = (8, 8)
    frame_stride: int = 4  # fit on every n-th frame of each episode (4: the latent-frame boundaries)
    per_task: bool = True  # one map per task (the instruction picks it); False: one map for every task
    folds: int = 5
    alphas: tuple[float, ...] = tuple(float(a) for a in np.logspace(-1, 6, 15))
    # "all": every dimension of the simulator observation; "positions": Meta-World's positions only, the objects'
    # orientations (ORIENTATION_DIMS) held at their median in the task's frames. An orientation barely varies in the
    # expert's episodes (its std under the state normaliser's floor), so a policy reads any change in its estimate as
    # a large, unseen input; in a failing policy's rollouts pucks tumble (17-59x that std), so an estimator refitted
    # on them moves it, and so would their mean
    targets: str = "all"

    def __post_init__(self):
        if self.targets not in TARGETS:
            raise RepwamError(f"targets is one of {', '.join(TARGETS)}, got {self.targets!r}")
        if self.frame_stride < 1:
            raise RepwamError(f"frame_stride must be >= 1, got {self.frame_stride}")
        if self.folds < 2:
            raise RepwamError(f"folds must be >= 2 (cross-fitting needs held-out episodes), got {self.folds}")
        if not self.alphas or min(self.alphas) <= 0:
            raise RepwamError(f"alphas must be positive, got {self.alphas}")
        if not self.cameras:
            raise RepwamError(f"camera names the view(s) the estimator reads, got {self.camera!r}")

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(camera_key(c.strip()) for c in self.camera.split(",") if c.strip())


def ridge_path(x: torch.Tensor, y: torch.Tensor, alphas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Centred ridge for every alpha at once, in whichever of the primal (F x F) and dual (N x N) forms is smaller:
    returns the maps (A, F, D) and the intercepts (A, D). x (N, F), y (N, D) float64."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    a = torch.tensor(alphas, dtype=x.dtype)
    if x.shape[0] >= x.shape[1]:  # primal: W = V diag(1 / (s + a)) V^T X^T y
        s, v = torch.linalg.eigh(xc.T @ xc)
        proj = v.T @ (xc.T @ yc)  # (F, D)
        w = v @ (proj[None] / (s[None, :, None].clamp_min(0) + a[:, None, None]))  # (A, F, D)
    else:  # dual: W = X^T U diag(1 / (s + a)) U^T y
        s, u = torch.linalg.eigh(xc @ xc.T)
        proj = u.T @ yc  # (N, D)
        w = xc.T @ (u @ (proj[None] / (s[None, :, None].clamp_min(0) + a[:, None, None])))  # (A, F, D)
    b = my[None] - torch.einsum("f,afd->ad", mx, w)
    return w, b


def crossfit_ridge(x: torch.Tensor, y: torch.Tensor, fold: np.ndarray, fit_rows: np.ndarray, alphas: list[float],
                   progress: bool = False) -> torch.Tensor:
    """Every row's out-of-fold prediction for every alpha, (A, N, D) float32: fold k's rows are predicted by the ridge
    fitted on the `fit_rows` of the other folds, so no row's own target (nor its episode's) reaches its estimate."""
    oof = torch.zeros(len(alphas), *y.shape, dtype=torch.float32)
    for k in tqdm(sorted(set(fold.tolist())), desc="estimator folds", disable=not progress):
        tr = torch.from_numpy(fit_rows & (fold != k))
        ho = torch.from_numpy(fold == k)
        w, b = ridge_path(x[tr].double(), y[tr], alphas)  # x may be float32 (memory): the solve is float64
        oof[:, ho] = (x[ho].double() @ w + b[:, None]).float()  # (A, n_ho, D)
    return oof


def episode_folds(datasets: list[LeRobotDataset], k: int) -> list[list[int]]:
    """The fold of every episode of every dataset: within each task, episodes in order go round the k folds."""
    seen: dict[str, int] = {}
    folds = []
    for ds in datasets:
        row = []
        for e in range(ds.num_episodes):
            task = ds.episode_task(e)
            row.append(seen.get(task, 0) % k)
            seen[task] = seen.get(task, 0) + 1
        folds.append(row)
    return folds


def cached_features(root: str | Path, teacher, grid: tuple[int, int], cameras: tuple[str, ...],
                    progress: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
    """(num_frames, V·L·C) float: every frame's teacher features of each view on the grid, side by side in `cameras`
    order (what `StateEstimator.features` computes from images), from the dataset's cache (made when missing);
    written into `out` when given (rows of a larger array: no second copy of the features in memory)."""
    for v, c in enumerate(cameras):
        f = teacher_cache(root, teacher, grid, progress=progress, camera=c).flatten(1)  # (N, L·C) float16
        if out is None:
            out = torch.empty(len(f), len(cameras) * f.shape[1])
        out[:, v * f.shape[1] : (v + 1) * f.shape[1]] = f
        del f
    return out


def standardise_(x: torch.Tensor, chunk: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """Each column of x (N, F) to zero mean and unit std (floored), in place and by row chunks (the features of a
    hundred thousand frames of two views are ~6 GB in float32: no copy of them); returns the (mean, std) used."""
    total, sq = torch.zeros(x.shape[1], dtype=torch.float64), torch.zeros(x.shape[1], dtype=torch.float64)
    for i in range(0, len(x), chunk):
        total += x[i : i + chunk].double().sum(0)
    mean = total / len(x)
    for i in range(0, len(x), chunk):
        sq += (x[i : i + chunk].double() - mean).pow(2).sum(0)
    std = (sq / max(len(x) - 1, 1)).sqrt().clamp_min(1e-6)
    mean, std = mean.float(), std.float()
    for i in range(0, len(x), chunk):
        x[i : i + chunk].sub_(mean).div_(std)
    return mean, std


def fit_estimator(data: list[str | Path], out: str | Path, cfg: EstimatorTrainConfig | None = None,
                  progress: bool = True) -> dict:
    """Fit, cross-fit and save (see the module docstring); returns the fit report."""
    cfg = cfg or EstimatorTrainConfig()
    datasets = [LeRobotDataset(d) for d in data]
    cameras = cfg.cameras
    for ds in datasets:
        if ENV_STATE_KEY not in ds.features:
            raise RepwamError(f"{ds.root} has no {ENV_STATE_KEY!r}: the estimator is fitted on the simulator state "
                              "that `repwam data generate` records")
        for camera in cameras:
            if camera not in ds.camera_keys:
                raise RepwamError(f"{ds.root} has no camera {camera!r}; it has {ds.camera_keys}")
    sizes = {int(ds.features[camera]["shape"][0]) for ds in datasets for camera in cameras}
    if len(sizes) != 1:
        raise RepwamError(f"the datasets' {list(cameras)} frames have different sizes {sorted(sizes)}")
    tasks = sorted({ds.episode_task(e) for ds in datasets for e in range(ds.num_episodes)})
    model_cfg = EstimatorConfig(teacher=cfg.teacher, teacher_layer=cfg.teacher_layer,
                                teacher_input_size=cfg.teacher_input_size, grid=cfg.grid, cameras=cameras,
                                image_size=sizes.pop(), tasks=tuple(tasks) if cfg.per_task else ())
    teacher = build_teacher(cfg.teacher, **teacher_options(cfg.teacher_layer, cfg.teacher_input_size))
    offsets = np.cumsum([0] + [ds.num_frames for ds in datasets])
    # the features of every frame of every dataset, (N, V·L·C) float32, filled in place (standardised in place below)
    x = torch.empty(int(offsets[-1]), len(cameras) * cfg.grid[0] * cfg.grid[1] * teacher.dim)
    targets = []
    for d, ds in enumerate(datasets):
        cached_features(ds.root, teacher, cfg.grid, cameras, progress, out=x[offsets[d] : offsets[d + 1]])
        targets.append(torch.cat([torch.from_numpy(np.array(ds.episode_data(e)[ENV_STATE_KEY], np.float32))
                                  for e in range(ds.num_episodes)]))
    del teacher
    y_all = torch.cat(targets)  # (N, D)
    fold_of = episode_folds(datasets, cfg.folds)
    fold = np.empty(len(x), np.int64)
    group = np.zeros(len(x), np.int64)  # the map each frame belongs to: its task's, or the one pooled map
    fit_rows = np.zeros(len(x), bool)
    for d, ds in enumerate(datasets):
        for e in range(ds.num_episodes):
            lo = offsets[d] + int(ds.episodes[e]["dataset_from_index"])
            hi = lo + ds.episode_length(e)
            fold[lo:hi] = fold_of[d][e]
            group[lo:hi] = tasks.index(ds.episode_task(e)) if cfg.per_task else 0
            fit_rows[lo : hi : cfg.frame_stride] = True
    if len(set(fold.tolist())) < cfg.folds:
        raise RepwamError(f"{cfg.folds} folds need at least {cfg.folds} episodes per task")

    feat_mean, feat_std = standardise_(x)  # from here on x holds the model's input features
    y_mean, y_std = y_all.mean(0), y_all.std(0).clamp_min(ENV_STATE_MIN_STD)
    y = ((y_all - y_mean) / y_std).double()
    alphas, dims = list(cfg.alphas), torch.arange(y.shape[1])
    held = list(ORIENTATION_DIMS) if cfg.targets == "positions" else []  # held at the map's median
    if held and y.shape[1] != 39:
        raise RepwamError(f"targets='positions' reads Meta-World's 39-d observation; {ENV_STATE_KEY} has "
                          f"{y.shape[1]} dimensions")
    n_maps = len(tasks) if cfg.per_task else 1
    weight, bias = torch.zeros(n_maps, x.shape[1], y.shape[1], dtype=torch.float64), torch.zeros(n_maps, y.shape[1])
    crossfit = torch.zeros(y.shape)
    chosen, cv_nmse = [], []
    for g in tqdm(range(n_maps), desc="estimator maps", disable=not progress or n_maps == 1):
        idx = torch.from_numpy(np.flatnonzero(group == g))
        oof = crossfit_ridge(x[idx], y[idx], fold[idx.numpy()], fit_rows[idx.numpy()], alphas)  # (A, n, D)
        at = torch.from_numpy(fit_rows[idx.numpy()])
        nmse = ((oof[:, at] - y[idx][at].float()) ** 2).mean(1)  # (A, D): held out, at the fitted frames
        best = nmse.argmin(0)  # each dimension its own ridge strength
        crossfit[idx] = oof[best, :, dims].T
        w, b = ridge_path(x[idx][at].double(), y[idx][at], alphas)  # (A, F, D), (A, D): every strength, per dim
        weight[g], bias[g] = w[best, :, dims].T, b[best, dims].float()
        if held:  # the task's typical value: the median (a peg's orientation is not a puck's; rollouts tumble pucks)
            typical = y[idx][:, held].median(0).values.float()
            crossfit[idx[:, None], torch.tensor(held)[None]] = typical
            weight[g][:, held], bias[g][held] = 0.0, typical
        chosen.append([alphas[i] for i in best.tolist()])
        cv_nmse.append(round(float(nmse[best, dims].mean()), 5))

    # fold into the raw units: estimate = ((f - mean) / std) @ (W * y_std) + (b * y_std + y_mean)
    model = StateEstimator(EstimatorConfig(**{**model_cfg.to_dict(), "feature_dim": x.shape[1],
                                               "target_dim": y.shape[1]}))
    model.feat_mean.copy_(feat_mean)
    model.feat_std.copy_(feat_std)
    model.weight.copy_((weight * y_std.double()).float())
    model.bias.copy_(bias * y_std + y_mean)
    crossfit = crossfit * y_std + y_mean  # (N, D) raw units

    at = torch.from_numpy(fit_rows)
    err = (crossfit - y_all)[at]
    report = {
        "maps": list(model_cfg.tasks) or ["all tasks"],
        "alphas": alphas,
        "alpha_per_dim": chosen,  # per map
        "cv_nmse": cv_nmse,  # per map, at each dimension's chosen strength
        "frames": int(len(x)),
        "fit_frames": int(at.sum()),
        "folds": cfg.folds,
        "targets": cfg.targets,
        "held_dims": held,  # held at their median over the map's frames (the task's)
        "rmse": [round(float(v), 5) for v in err.pow(2).mean(0).sqrt()],
    }
    if y.shape[1] == 39:  # Meta-World: the mean 3-D error of each position, in cm, overall and per task
        def cm(rows):
            e = (crossfit - y_all)[torch.from_numpy(rows)]
            return {k: round(float(e[:, s].norm(dim=1).mean() * 100), 2) for k, s in POSITIONS.items()}

        report["cv_error_cm"] = cm(fit_rows)
        task_of = np.concatenate([[ds.episode_task(e)] * ds.episode_length(e) for ds in datasets
                                  for e in range(ds.num_episodes)])
        report["cv_error_cm_per_task"] = {t: cm(fit_rows & (task_of == t)) for t in tasks}
    estimates = {str(d): crossfit[offsets[d] : offsets[d + 1]].contiguous() for d in range(len(datasets))}
    meta = {"fit": report, "fit_data": [{"root": str(Path(ds.root).resolve()), "num_frames": ds.num_frames,
                                         "episodes_hash": episodes_hash(ds)} for ds in datasets]}
    model.save_pretrained(out, meta=meta, extras={"estimates": estimates})
    (Path(out) / "fit.json").write_text(json.dumps(report, indent=1))
    return report


def episodes_hash(ds: LeRobotDataset) -> str:
    """What identifies a dataset's episodes whatever cameras or image size rendered them: a hash of the simulator
    state of every frame and of the episodes' lengths and tasks."""
    h = hashlib.sha1()
    for e in range(ds.num_episodes):
        h.update(f"{ds.episode_task(e)}:{ds.episode_length(e)};".encode())
        h.update(np.ascontiguousarray(np.asarray(ds.episode_data(e)[ENV_STATE_KEY], np.float32)).tobytes())
    return h.hexdigest()


def crossfit_estimates(estimator: str | Path, roots: list[str | Path]) -> dict[str, np.ndarray]:
    """The cross-fitted estimates of each dataset root, {resolved root: (num_frames, D)}, or an error naming a root
    whose episodes the estimator was not fitted on (a WAM adapts on those only: elsewhere its estimates would be
    in-sample). A root matches a fitted dataset by path, or by its episodes: the same episodes rendered from other
    cameras (an estimator can read views the WAM does not) carry the same estimates."""
    from safetensors.torch import load_file

    meta = read_config(estimator)
    if meta.get("type") != StateEstimator.checkpoint_type:
        raise RepwamError(f"{estimator} is not a state estimator (its config.json says type {meta.get('type')!r})")
    fitted = meta.get("fit_data", [])
    saved = load_file(str(Path(estimator) / "estimates.safetensors"))
    out = {}
    for root in roots:
        key, ds = str(Path(root).resolve()), LeRobotDataset(root)
        by_path = [i for i, f in enumerate(fitted) if f["root"] == key]
        if by_path:
            i = by_path[0]
            if ds.num_frames != fitted[i]["num_frames"] or fitted[i].get("episodes_hash", None) not in (
                    None, episodes_hash(ds)):
                raise RepwamError(f"{key} has changed since the estimator {estimator} was fitted on it: refit it")
        else:
            h = episodes_hash(ds)  # reads every episode's simulator state: once per root
            same = [i for i, f in enumerate(fitted) if f.get("episodes_hash") == h]
            if not same:
                raise RepwamError(f"the estimator {estimator} was fitted on {[f['root'] for f in fitted]}, not on "
                                  f"{key} nor on its episodes: fit it on the data the world action model adapts on "
                                  "(`repwam train estimator --data ...`)")
            i = same[0]
        if len(saved[str(i)]) != ds.num_frames:
            raise RepwamError(f"{key} has changed since the estimator {estimator} was fitted on it: refit it")
        out[key] = saved[str(i)].numpy()
    return out


def estimator_ref(path: str | Path) -> dict:
    """How a WAM checkpoint names its estimator: path and weights hash."""
    return {"type": StateEstimator.checkpoint_type, "path": str(Path(path).resolve()), "weights_hash": weights_hash(path)}
