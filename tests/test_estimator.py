"""The state estimator: ridge on the frozen teacher's features, cross-fitted (repwam.policy.estimator,
repwam.train.estimator)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from repwam.errors import RepwamError
from repwam.train.estimator import EstimatorTrainConfig, crossfit_estimates, crossfit_ridge, fit_estimator, ridge_path


@pytest.mark.parametrize("n,f", [(40, 12), (12, 40)])  # the primal and the dual form
def test_ridge_path_solves_the_normal_equations(n, f):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, f, generator=g, dtype=torch.float64), torch.randn(n, 3, generator=g, dtype=torch.float64)
    w, b = ridge_path(x, y, [0.3, 30.0])
    for i, a in enumerate([0.3, 30.0]):
        xc, yc = x - x.mean(0), y - y.mean(0)
        ref = torch.linalg.solve(xc.T @ xc + a * torch.eye(f, dtype=x.dtype), xc.T @ yc)
        torch.testing.assert_close(w[i], ref)
        torch.testing.assert_close(b[i], y.mean(0) - x.mean(0) @ ref)


def test_crossfit_estimates_never_see_their_own_fold():
    """Changing the targets of fold 0's rows leaves fold 0's out-of-fold estimates unchanged (for every alpha) and
    moves the others' (they were fitted on fold 0)."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(60, 8, generator=g, dtype=torch.float64), torch.randn(60, 2, generator=g, dtype=torch.float64)
    fold = np.repeat(np.arange(3), 20)
    fit_rows = np.ones(60, bool)
    fit_rows[::5] = False  # rows outside the fit are still predicted
    a = crossfit_ridge(x, y, fold, fit_rows, [0.1, 10.0])
    y2 = y.clone()
    y2[fold == 0] += 5 * torch.randn(20, 2, generator=g, dtype=torch.float64)
    b = crossfit_ridge(x, y2, fold, fit_rows, [0.1, 10.0])
    assert a.shape == (2, 60, 2)
    torch.testing.assert_close(a[:, fold == 0], b[:, fold == 0])
    assert (a[:, fold != 0] - b[:, fold != 0]).abs().max() > 1e-3


def test_fit_saves_a_model_whose_camera_reading_matches_the_cache(tiny_dataset, tmp_path):
    """Fitted on the tiny dataset: the saved estimator, run on camera frames, gives what the ridge map gives on the
    cached teacher features; the cross-fitted estimates cover every frame and are not the in-sample fit; a WAM gets
    them for the episodes the estimator was fitted on, at that path or at another (another render of them)."""
    from repwam.data.lerobot import LeRobotDataset
    from repwam.data.transforms import frames_to_model
    from repwam.policy.estimator import StateEstimator
    from repwam.serve import ENV_STATE_KEY
    from repwam.tokenizer.teachers import build_teacher
    from repwam.tokenizer.tokenize import teacher_cache

    with pytest.raises(RepwamError, match="folds must be >= 2"):
        EstimatorTrainConfig(folds=1)
    with pytest.raises(RepwamError, match="no camera"):
        fit_estimator([tiny_dataset], tmp_path / "x", EstimatorTrainConfig(camera="topview", folds=3), progress=False)
    with pytest.raises(RepwamError, match="at least 4 episodes per task"):
        fit_estimator([tiny_dataset], tmp_path / "x", EstimatorTrainConfig(folds=4), progress=False)

    out = tmp_path / "est"
    report = fit_estimator([tiny_dataset], out, EstimatorTrainConfig(folds=3, frame_stride=2), progress=False)
    ds = LeRobotDataset(tiny_dataset)
    tasks = sorted({ds.episode_task(e) for e in range(ds.num_episodes)})
    assert set(report["cv_error_cm"]) == {"hand", "object", "goal"} and set(report["cv_error_cm_per_task"]) == set(tasks)
    assert report["maps"] == tasks and all(set(a) <= set(report["alphas"]) for a in report["alpha_per_dim"])
    assert json.loads((out / "fit.json").read_text())["maps"] == tasks
    model = StateEstimator.from_pretrained(out)
    assert model.cfg.cameras == (ds.camera_keys[0],) and model.cfg.target_dim == 39 and model.cfg.tasks == tuple(tasks)
    assert set(model.state_dict()) == {"feat_mean", "feat_std", "weight", "bias"}  # the teacher is named, not saved
    assert next(StateEstimator.from_pretrained(out).double().teacher.parameters()).dtype == torch.float64  # moves
    with pytest.raises(RepwamError, match="has a map for the tasks"):
        model.predict(torch.zeros(1, model.cfg.feature_dim), "open the window")

    frames = torch.from_numpy(ds.episode_frames(1, ds.camera_keys[0])[:6]).permute(0, 3, 1, 2)
    cached = teacher_cache(ds.root, build_teacher("efficientnet-lite0", layer="stage5", input_size=128), (8, 8),
                           progress=False)
    start, task = ds.episode_length(0), ds.episode_task(1)
    from_cache = model.predict(cached[start : start + 6].flatten(1).float(), task)
    torch.testing.assert_close(model(frames_to_model(frames), task), from_cache, atol=1e-3, rtol=1e-3)

    est = crossfit_estimates(out, [tiny_dataset])[str(ds.root.resolve())]
    assert est.shape == (ds.num_frames, 39) and np.isfinite(est).all()
    offsets = np.cumsum([0] + [ds.episode_length(e) for e in range(ds.num_episodes)])
    in_sample = np.concatenate([model.predict(cached[offsets[e] : offsets[e + 1]].flatten(1).float(),
                                              ds.episode_task(e)).numpy() for e in range(ds.num_episodes)])
    assert np.abs(est - in_sample).max() > 1e-3  # held out, not the final fit
    env = np.concatenate([ds.episode_data(e)[ENV_STATE_KEY] for e in range(ds.num_episodes)])
    assert np.abs(in_sample - env).mean() < np.abs(est - env).mean()  # the final fit has seen every frame
    import shutil

    copy = tmp_path / "copy"  # the same episodes elsewhere (as another render of them would be): the same estimates
    shutil.copytree(tiny_dataset, copy, ignore=shutil.ignore_patterns("cache"))
    np.testing.assert_array_equal(crossfit_estimates(out, [copy])[str(copy.resolve())], est)
    with pytest.raises(RepwamError, match="takes images"):
        model(torch.zeros(3, 64, 64), task)
    # targets="positions": the objects' orientations are their median, in the map and in the cross-fitted estimates;
    # the positions are what the full fit gives
    from repwam.train.estimator import ORIENTATION_DIMS

    with pytest.raises(RepwamError, match="targets is one of"):
        EstimatorTrainConfig(targets="quaternions")
    pos = fit_estimator([tiny_dataset], tmp_path / "pos", EstimatorTrainConfig(folds=3, frame_stride=2,
                                                                              targets="positions"), progress=False)
    assert pos["held_dims"] == list(ORIENTATION_DIMS) and pos["targets"] == "positions"
    pmodel = StateEstimator.from_pretrained(tmp_path / "pos")
    held, kept = list(ORIENTATION_DIMS), [d for d in range(39) if d not in ORIENTATION_DIMS]
    assert float(pmodel.weight[..., held].abs().max()) == 0.0
    task_of = np.concatenate([[ds.episode_task(e)] * ds.episode_length(e) for e in range(ds.num_episodes)])
    pest = crossfit_estimates(tmp_path / "pos", [tiny_dataset])[str(ds.root.resolve())]
    for g, t in enumerate(tasks):  # each task's own median (orientations differ between tasks' objects)
        rows = torch.from_numpy(env[task_of == t][:, held])
        typical = rows.median(0).values.numpy()  # torch's median: the lower of the two middle values
        np.testing.assert_allclose(pmodel.bias[g, held].numpy(), typical, atol=1e-5)
        np.testing.assert_allclose(pest[task_of == t][:, held],
                                   np.broadcast_to(typical, ((task_of == t).sum(), len(held))), atol=1e-5)
    assert np.abs(pmodel.bias[0, held] - pmodel.bias[1, held]).max() > 1e-3  # not one mean for every task
    np.testing.assert_allclose(pest[:, kept], est[:, kept], atol=1e-5)
    pooled = fit_estimator([tiny_dataset], tmp_path / "pooled", EstimatorTrainConfig(folds=3, per_task=False),
                           progress=False)
    assert pooled["maps"] == ["all tasks"] and StateEstimator.from_pretrained(tmp_path / "pooled").weight.shape[0] == 1


def test_fit_on_two_views_reads_them_side_by_side(tmp_path, tiny_dataset):
    """`--camera corner3,topview`: the features are each view's cached teacher grid side by side, the saved model
    reads (N, 2, 3, S, S) in that order; a view the data lacks, or an empty list, is a clear error; a checkpoint
    saved with the one-view `camera` key still loads; other episodes get no estimates."""
    from repwam.data.generate import GenerateConfig, generate
    from repwam.data.lerobot import LeRobotDataset
    from repwam.data.transforms import frames_to_model
    from repwam.policy.estimator import EstimatorConfig, StateEstimator
    from repwam.tokenizer.teachers import build_teacher
    from repwam.tokenizer.tokenize import teacher_cache

    root = tmp_path / "two"
    generate(root, GenerateConfig(tasks=["reach-v3"], episodes_per_task=3, workers=1, cameras=("corner3", "topview")))
    with pytest.raises(RepwamError, match="camera names the view"):
        EstimatorTrainConfig(camera=" , ")
    with pytest.raises(RepwamError, match="no camera 'observation.images.corner'"):
        fit_estimator([root], tmp_path / "x", EstimatorTrainConfig(camera="corner3,corner", folds=3), progress=False)
    out = tmp_path / "est"
    fit_estimator([root], out, EstimatorTrainConfig(camera="corner3,topview", folds=3), progress=False)
    model = StateEstimator.from_pretrained(out)
    ds = LeRobotDataset(root)
    views = ("observation.images.corner3", "observation.images.topview")
    assert model.cfg.cameras == views
    teacher = build_teacher("efficientnet-lite0", layer="stage5", input_size=128)
    cached = [teacher_cache(root, teacher, (8, 8), progress=False, camera=c)[:5].flatten(1).float() for c in views]
    assert model.cfg.feature_dim == 2 * cached[0].shape[1]
    task = ds.episode_task(0)
    frames = torch.stack([frames_to_model(torch.from_numpy(ds.episode_frames(0, c)[:5]).permute(0, 3, 1, 2))
                          for c in views], 1)  # (5, 2, 3, S, S)
    torch.testing.assert_close(model(frames, task), model.predict(torch.cat(cached, 1), task), atol=1e-3, rtol=1e-3)
    swapped = model.predict(torch.cat(cached[::-1], 1), task)
    assert (swapped - model(frames, task)).abs().max() > 1e-3  # the order of the views matters
    with pytest.raises(RepwamError, match=r"reads 2 view\(s\)"):
        model(frames[:, 0], task)
    with pytest.raises(RepwamError, match="nor on its episodes"):
        crossfit_estimates(out, [tiny_dataset])

    legacy = {**model.cfg.to_dict(), "camera": views[0]}
    del legacy["cameras"]
    legacy["feature_dim"] = 0
    assert EstimatorConfig.from_dict(legacy).cameras == views[:1]
    with pytest.raises(RepwamError, match="distinct cameras"):
        EstimatorConfig(cameras=(views[0], views[0]))
