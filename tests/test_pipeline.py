"""The job graph behind `repwam demo` and `repwam ablate`: dependency order, finished jobs skipped, a failure stops
new jobs and is raised, timings and the run's wall time kept across sittings; and the rows' job graphs."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from repwam.errors import RepwamError
from repwam.train.pipeline import DEMO, Job, Pipeline, PipelineConfig, ablation, demo


def fake_pipeline(tmp_path, fail: set[str] = frozenset(), graph=None, cores: dict | None = None):
    p = Pipeline(tmp_path / "run", PipelineConfig(jobs=2))
    for name, needs, *max_cores in graph or (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b", "c"])):
        p.add(name, ["noop"], p.out / f"{name}.done", needs, *max_cores)
    order, lock = [], threading.Lock()

    def run(job, n_cores=1):
        with lock:
            order.append(job.name)
            if cores is not None:
                cores[job.name] = n_cores
        if job.name in fail:
            raise RepwamError(f"job {job.name} failed")
        job.done.parent.mkdir(parents=True, exist_ok=True)
        job.done.write_text("ok")
        return 1.0

    p._run = run
    return p, order


def test_jobs_run_after_what_they_need_and_finished_ones_are_skipped(tmp_path):
    p, order = fake_pipeline(tmp_path)
    assert set(p.run(progress=False)) == {"a", "b", "c", "d"}
    assert order[0] == "a" and order[-1] == "d" and set(order[1:3]) == {"b", "c"}
    assert p.timings() == {n: 1.0 for n in "abcd"} and (p.out / "wall.json").exists()
    (p.out / "d.done").unlink()  # a second sitting runs only what is missing; the wall time adds up
    first_wall = p.wall_seconds()
    p2, order2 = fake_pipeline(tmp_path)
    p2.run(progress=False)
    assert order2 == ["d"] and p2.wall_seconds() >= first_wall


def test_jobs_only_finished_jobs_need_are_skipped(tmp_path):
    """Results copied in from an earlier sitting (d's proof) make the jobs that only d needs unnecessary; a job
    another unfinished job still needs runs."""
    p, order = fake_pipeline(tmp_path / "x")
    (p.out).mkdir(parents=True)
    (p.out / "d.done").write_text("copied in")
    assert p.pending() == [] and p.run(progress=False) == {} and order == []
    graph = (("a", []), ("b", ["a"]), ("c", ["a"]), ("d", ["b"]), ("e", ["c"]))
    p, order = fake_pipeline(tmp_path / "y", graph=graph)
    (p.out).mkdir(parents=True)
    (p.out / "d.done").write_text("copied in")
    assert p.pending() == ["a", "c", "e"]
    p.run(progress=False)
    assert order == ["a", "c", "e"] and not (p.out / "b.done").exists()


def test_a_failure_stops_what_depends_on_it_and_is_raised(tmp_path):
    p, order = fake_pipeline(tmp_path, fail={"b"})
    with pytest.raises(RepwamError, match="job b failed"):
        p.run(progress=False)
    assert "d" not in order and (p.out / "a.done").exists()


def test_a_multi_core_job_takes_the_free_cores(tmp_path):
    """An evaluation (max_cores 2) started when both cores are free gets both, and the next job waits for it; started
    beside a running job it gets the one core left. The count reaches the command's --workers."""
    cores = {}
    p, order = fake_pipeline(tmp_path / "x", graph=(("a", []), ("b", ["a"], 2), ("c", ["a"])), cores=cores)
    p.run(progress=False)
    assert order == ["a", "b", "c"] and cores == {"a": 2, "b": 2, "c": 2}  # a and c: the only job left to run
    cores = {}
    p, order = fake_pipeline(tmp_path / "y", graph=(("a", []), ("c", ["a"]), ("b", ["a"], 2)), cores=cores)
    p.run(progress=False)
    assert cores["b"] == 1 and set(order[1:]) == {"b", "c"}
    ev = demo(tmp_path / "demo", DEMO).jobs["eval-wam_repwam_s0"]
    cmd = Pipeline(tmp_path / "demo", DEMO)._command(ev, 2)
    assert ev.max_cores == DEMO.eval_workers and cmd[cmd.index("--workers") + 1] == "2"


def test_a_job_every_other_job_waits_on_gets_the_free_cores_as_threads(tmp_path, monkeypatch):
    """The tokenizer of a one-row chain (every job left needs it) runs on both cores as threads; two jobs that could
    run side by side get one core each, and so does a job started beside a running one. The count reaches the
    process's OMP_NUM_THREADS."""
    cores = {}
    graph = (("tok", []), ("lat", ["tok"]), ("wam", ["lat"]), ("plain", []), ("eval", ["wam", "plain"], 2))
    p, order = fake_pipeline(tmp_path / "x", graph=graph, cores=cores)
    p.run(progress=False)
    assert cores["tok"] == 1 and cores["plain"] == 1  # plain could run beside the chain
    cores = {}
    graph = (("data", []), ("tok", ["data"]), ("lat", ["tok"]), ("wam", ["lat"]), ("adapt", ["wam"]),
             ("ev", ["adapt"], 2))
    p, order = fake_pipeline(tmp_path / "y", graph=graph, cores=cores)
    p.run(progress=False)
    assert cores == {"data": 2, "tok": 2, "lat": 2, "wam": 2, "adapt": 2, "ev": 2}
    cores = {}
    graph = (("tok", []), ("wam0", ["tok"]), ("wam1", ["tok"]), ("ev", ["wam0", "wam1"]))
    p, order = fake_pipeline(tmp_path / "z", graph=graph, cores=cores)
    p.run(progress=False)
    assert cores == {"tok": 2, "wam0": 1, "wam1": 1, "ev": 2}
    seen = {}

    class Proc:  # records the environment the job's process would get
        returncode = 0

        def __init__(self, cmd, env, **kw):
            seen[cmd[-1]] = env["OMP_NUM_THREADS"]

        def wait(self):
            return 0

    q = Pipeline(tmp_path / "env", PipelineConfig(jobs=2))
    q.add("one", ["noop", "--x", "1"], q.out / "one.done")
    q.add("ev", ["noop", "--workers", "1", "--x", "2"], q.out / "ev.done", max_cores=2)
    monkeypatch.setattr("repwam.train.pipeline.subprocess.Popen", Proc)
    q._run(q.jobs["one"], 2)
    q._run(q.jobs["ev"], 2)
    assert seen == {"1": "2", "2": "1"}  # threads for a single process; one thread per worker process


def test_budget_minutes_shares_the_time_between_the_stages(tmp_path):
    """With budget_minutes every training job gets optim.minutes (its share of the budget after the fixed costs) and
    a raised step cap; the baseline gets the WAM's pretraining + adaptation time; too small a budget is refused."""
    from repwam.train.pipeline import BUDGET_SHARES, FIXED_MINUTES, STEPS_CAP_FACTOR

    cfg = PipelineConfig(tasks="reach-v3", budget_minutes=26.0)
    jobs = demo(tmp_path / "b", cfg).jobs
    minutes = {n: float(j.args[j.args.index("--optim.minutes") + 1]) for n, j in jobs.items() if n.startswith("train")}
    left = 26.0 - FIXED_MINUTES
    assert minutes["train-tok_default"] == pytest.approx(left * BUDGET_SHARES["tokenizer"], abs=0.01)
    assert minutes["train-plain_plain_s0"] == pytest.approx(minutes["train-wampre_repwam_s0"]
                                                            + minutes["train-wam_repwam_s0"], abs=0.02)
    assert sum(minutes.values()) - minutes["train-plain_plain_s0"] == pytest.approx(left, abs=0.05)
    tok = jobs["train-tok_default"].args
    assert int(tok[tok.index("--optim.steps") + 1]) == cfg.tok_steps * STEPS_CAP_FACTOR
    assert "--optim.minutes" not in demo(tmp_path / "nob", DEMO).jobs["train-tok_default"].args
    with pytest.raises(RepwamError, match="give at least"):
        demo(tmp_path / "small", PipelineConfig(budget_minutes=FIXED_MINUTES + 1))


def test_rows_build_the_documented_job_graphs(tmp_path):
    cfg = PipelineConfig(tasks="reach-v3", eval_workers=2)
    p = ablation(tmp_path, cfg, ["repwam", "recon", "joint", "no_ell", "plain"], [0, 1])
    jobs = p.jobs
    assert jobs["train-wam_repwam_s1"].needs == ["train-wampre_repwam_s1", "data"]
    assert jobs["train-wampre_repwam_s0"].needs == ["train-lat_default"] == jobs["train-wampre_no_ell_s0"].needs
    assert "--no-use-latent-actions" in jobs["train-wam_no_ell_s0"].args
    assert jobs["train-lat_none"].needs == ["train-tok_none"] and "train-wampre_joint_s0" not in jobs
    assert jobs["train-plain_plain_s0"].needs == ["data"]
    ev = jobs["eval-wam_repwam_s0"].args
    assert ev[ev.index("--workers") + 1] == "2" and ev[ev.index("--seed") + 1] == "0"
    with pytest.raises(RepwamError, match="unknown ablation rows"):
        ablation(tmp_path, cfg, ["nope"], [0])
    # no_state: adapts repwam's own pretraining without the state token
    ns = ablation(tmp_path / "ns", cfg, ["repwam", "no_state"], [0]).jobs
    assert ns["train-wam_no_state_s0"].needs == ["train-wampre_repwam_s0", "data"] and "train-wampre_no_state_s0" not in ns
    assert "--no-use-state" in ns["train-wam_no_state_s0"].args and "--no-use-state" not in ns["train-wam_repwam_s0"].args
    # first_frame: adapts repwam's own pretraining with the episode's first frame as context
    ff = ablation(tmp_path / "ff", cfg, ["repwam", "first_frame"], [0]).jobs
    assert ff["train-wam_first_frame_s0"].needs == ["train-wampre_repwam_s0", "data"]
    assert "--first-frame-context" in ff["train-wam_first_frame_s0"].args
    assert "--first-frame-context" not in ff["train-wam_repwam_s0"].args
    # teacher: the whole chain on the frozen teacher's features
    te = ablation(tmp_path / "te", cfg, ["teacher"], [0]).jobs
    args = te["train-tok_teacher"].args
    assert args[args.index("--recipe") + 1] == "teacher" and te["train-lat_teacher"].needs == ["train-tok_teacher"]
    assert te["train-wampre_teacher_s0"].needs == ["train-lat_teacher"]
    # repwam_goal: adapts repwam's own pretraining with the simulator state as the state token
    rg = ablation(tmp_path / "rg", cfg, ["repwam", "repwam_goal"], [0]).jobs
    assert rg["train-wam_repwam_goal_s0"].needs == ["train-wampre_repwam_s0", "data"]
    args = rg["train-wam_repwam_goal_s0"].args
    assert args[args.index("--state-key") + 1] == "observation.environment_state"
    assert "--state-key" not in rg["train-wam_repwam_s0"].args
    # repwam_est: adapts repwam's own pretraining on the state estimator's reading of the camera, fitted first
    re_ = ablation(tmp_path / "re", cfg, ["repwam", "repwam_est"], [0]).jobs
    assert re_["train-wam_repwam_est_s0"].needs == ["train-wampre_repwam_s0", "data", "train-estimator"]
    assert re_["train-estimator"].needs == ["data"] and re_["train-estimator"].args[:2] == ["train", "estimator"]
    args = re_["train-wam_repwam_est_s0"].args
    assert args[args.index("--state-key") + 1] == "observation.estimated_state"
    assert args[args.index("--estimator") + 1] == re_["train-estimator"].args[re_["train-estimator"].args.index("--out") + 1]
    assert "train-estimator" not in rg
    # no_forecast: adapts repwam's own pretraining, never training the forecast; latent_policy: the action expert
    # alone on the latents, from scratch (no pretraining, no ℓ, no forecast), for the plain policy's steps
    nf = ablation(tmp_path / "nf", cfg, ["repwam", "no_forecast", "latent_policy"], [0]).jobs
    assert nf["train-wam_no_forecast_s0"].needs == ["train-wampre_repwam_s0", "data"]
    args = nf["train-wam_no_forecast_s0"].args
    assert args[args.index("--video-drop") + 1] == "1" and "--video-drop" not in nf["train-wam_repwam_s0"].args
    lp = nf["train-wam_latent_policy_s0"].args
    assert nf["train-wam_latent_policy_s0"].needs == ["train-lat_default", "data"]
    assert "train-wampre_latent_policy_s0" not in nf and "--init" not in lp
    assert lp[lp.index("--recipe") + 1] == "no-latent-actions" and lp[lp.index("--video-drop") + 1] == "1"
    assert lp[lp.index("--optim.steps") + 1] == str(cfg.plain_steps) and "eval-wam_latent_policy_s0" in nf
    # joint_no_ell: the same from scratch, also learning the forecast (the default video drop)
    jn = ablation(tmp_path / "jn", cfg, ["joint_no_ell"], [0]).jobs
    args = jn["train-wam_joint_no_ell_s0"].args
    assert jn["train-wam_joint_no_ell_s0"].needs == ["train-lat_default", "data"] and "--init" not in args
    assert args[args.index("--recipe") + 1] == "no-latent-actions" and "--video-drop" not in args
    assert args[args.index("--optim.steps") + 1] == str(cfg.plain_steps) and "eval-wam_joint_no_ell_s0" in jn
    # latent_policy_ell: ℓ and the actions from scratch, never the forecast (no_forecast without the pretraining)
    le = ablation(tmp_path / "le", cfg, ["latent_policy_ell"], [0]).jobs
    args = le["train-wam_latent_policy_ell_s0"].args
    assert le["train-wam_latent_policy_ell_s0"].needs == ["train-lat_default", "data"] and "--init" not in args
    assert args[args.index("--recipe") + 1] == "joint" and args[args.index("--video-drop") + 1] == "1"
    assert args[args.index("--optim.steps") + 1] == str(cfg.plain_steps) and "eval-wam_latent_policy_ell_s0" in le
    # repwam adapts with ℓ left out (the adapt recipe's default), adapt_no_ell says so explicitly and repwam_ell
    # denoises ℓ beside the actions (the default before); both share repwam's pretraining, which still learns ℓ
    from repwam.train.args import train_args

    an = ablation(tmp_path / "an", cfg, ["repwam", "adapt_no_ell", "repwam_ell"], [0]).jobs
    ell_drop = {}
    for row, flag in (("repwam", None), ("adapt_no_ell", "1"), ("repwam_ell", "0.25")):
        assert an[f"train-wam_{row}_s0"].needs == ["train-wampre_repwam_s0", "data"]
        args = an[f"train-wam_{row}_s0"].args
        assert args[args.index("--recipe") + 1] == "adapt"
        assert (args[args.index("--ell-drop") + 1] if "--ell-drop" in args else None) == flag
        ell_drop[row] = train_args("wam", args[2:])[0].ell_drop
    assert ell_drop == {"repwam": 1.0, "adapt_no_ell": 1.0, "repwam_ell": 0.25}
    assert "--ell-drop" not in an["train-wampre_repwam_s0"].args
    assert train_args("wam", an["train-wampre_repwam_s0"].args[2:])[0].ell_drop is None
    # latent_policy on the reconstruction-only tokenizer's latents and on the frozen teacher's features
    for row, recipe in (("latent_policy_recon", "none"), ("latent_policy_teacher", "teacher")):
        jobs = ablation(tmp_path / row, cfg, [row], [0]).jobs
        args = jobs[f"train-wam_{row}_s0"].args
        assert jobs[f"train-wam_{row}_s0"].needs == [f"train-lat_{recipe}", "data"] and "--init" not in args
        assert args[args.index("--tokenizer") + 1].endswith(f"tok_{recipe}/checkpoints/last")
        assert args[args.index("--recipe") + 1] == "no-latent-actions" and args[args.index("--video-drop") + 1] == "1"
        assert "train-tok_default" not in jobs and f"eval-wam_{row}_s0" in jobs
    # plain_goal: the plain policy told the simulator state (the privileged reference), on the same data
    pg = ablation(tmp_path / "pg", cfg, ["plain", "plain_goal"], [0]).jobs
    args = pg["train-plain_plain_goal_s0"].args
    assert args[args.index("--state-key") + 1] == "observation.environment_state"
    assert "--state-key" not in pg["train-plain_plain_s0"].args and pg["train-plain_plain_goal_s0"].needs == ["data"]
    assert "eval-plain_plain_goal_s0" in pg
    assert all("--optim.keep-snapshots" not in j.args for j in jobs.values())  # each stage's own default
    keep = ablation(tmp_path / "keep", PipelineConfig(tasks="reach-v3", keep_snapshots=12), ["repwam", "plain"], [0])
    for name in ("train-tok_default", "train-wam_repwam_s0", "train-plain_plain_s0"):
        args = keep.jobs[name].args
        assert args[args.index("--optim.keep-snapshots") + 1] == "12"
    d = demo(tmp_path / "demo", DEMO)
    assert {"eval-wam_repwam_s0", "eval-plain_plain_s0", "eval-tokenizer", "eval-lat", "eval-wam"} <= set(d.jobs)


def test_tok_args_reach_every_tokenizer_and_another_value_under_the_same_out_is_refused(tmp_path):
    cfg = PipelineConfig(tasks="reach-v3", tok_args="--align-weight 4 --teacher-layer stage4")
    jobs = ablation(tmp_path, cfg, ["repwam", "recon"], [0]).jobs
    for name in ("train-tok_default", "train-tok_none"):
        args = jobs[name].args
        assert args[args.index("--align-weight") + 1] == "4" and args[args.index("--teacher-layer") + 1] == "stage4"
    assert "--align-weight" not in jobs["train-lat_default"].args
    ablation(tmp_path, cfg, ["repwam"], [0])  # the same value: resumes
    with pytest.raises(RepwamError, match=r"tok_args='--align-weight 4 --teacher-layer stage4'; this asks for "
                                          r"tok_args='': use another --out"):
        ablation(tmp_path, PipelineConfig(tasks="reach-v3"), ["repwam"], [0])
    assert "--align-weight" not in ablation(tmp_path / "plain", PipelineConfig(tasks="reach-v3"), ["repwam"],
                                            [0]).jobs["train-tok_default"].args


def test_wam_args_reach_pretraining_and_joint_not_adaptation_and_another_value_is_refused(tmp_path):
    cfg = PipelineConfig(tasks="reach-v3", tok_args="--patch-size 4", wam_args="--patch-size 4")
    jobs = ablation(tmp_path, cfg, ["repwam", "joint"], [0]).jobs
    for name in ("train-wampre_repwam_s0", "train-wam_joint_s0"):
        args = jobs[name].args
        assert args[args.index("--patch-size") + 1] == "4"
    assert "--patch-size" not in jobs["train-wam_repwam_s0"].args  # adaptation keeps the pretrained model's
    with pytest.raises(RepwamError, match=r"wam_args='--patch-size 4'; this asks for wam_args='': use another --out"):
        ablation(tmp_path, PipelineConfig(tasks="reach-v3", tok_args="--patch-size 4"), ["repwam"], [0])


def test_adapt_args_reach_adaptation_only_and_another_value_is_refused(tmp_path):
    cfg = PipelineConfig(tasks="reach-v3", adapt_args="--video-weight 4")
    jobs = ablation(tmp_path, cfg, ["repwam", "no_state", "joint", "latent_policy"], [0]).jobs
    for name in ("train-wam_repwam_s0", "train-wam_no_state_s0"):
        args = jobs[name].args
        assert args[args.index("--video-weight") + 1] == "4"
    for name in ("train-wampre_repwam_s0", "train-wam_joint_s0", "train-wam_latent_policy_s0"):
        assert "--video-weight" not in jobs[name].args
    with pytest.raises(RepwamError, match=r"adapt_args='--video-weight 4'; this asks for adapt_args='': use another"):
        ablation(tmp_path, PipelineConfig(tasks="reach-v3"), ["repwam"], [0])


def test_estimator_layouts_feed_the_estimator_only_and_another_value_is_refused(tmp_path):
    cfg = PipelineConfig(tasks="reach-v3", episodes_per_task=5, estimator_layouts_per_task=40)
    jobs = ablation(tmp_path, cfg, ["repwam", "repwam_est"], [0]).jobs
    gen = jobs["data-layouts"].args
    assert gen[gen.index("--seed") + 1] == "1" and gen[gen.index("--episodes-per-task") + 1] == "40"
    est = jobs["train-estimator"]
    assert est.needs == ["data", "data-layouts"]
    assert [est.args[i + 1] for i, a in enumerate(est.args) if a == "--data"] == [str(jobs["data"].done.parent.parent),
                                                                                 gen[gen.index("--out") + 1]]
    assert not any("data-layouts" in j.needs for n, j in jobs.items() if n != "train-estimator")
    assert "data-layouts" not in ablation(tmp_path / "none", PipelineConfig(tasks="reach-v3"), ["repwam_est"], [0]).jobs
    with pytest.raises(RepwamError, match="estimator_layouts_per_task=40; this asks for estimator_layouts_per_task=0"):
        ablation(tmp_path, PipelineConfig(tasks="reach-v3", episodes_per_task=5), ["repwam_est"], [0])


def test_estimator_cameras_render_the_demonstrations_again_for_the_estimator_only(tmp_path):
    cfg = PipelineConfig(tasks="reach-v3", episodes_per_task=5, estimator_layouts_per_task=40,
                         estimator_cameras="corner3,corner")
    jobs = ablation(tmp_path, cfg, ["repwam", "repwam_est"], [0]).jobs
    again, gen, est = jobs["data-estimator"].args, jobs["data-layouts"].args, jobs["train-estimator"]
    demos = jobs["data"].args
    for a in (again, gen):
        assert a[a.index("--camera") + 1] == "corner3,corner"
    assert demos[demos.index("--camera") + 1] == "corner3"  # every other stage sees what it saw before
    assert [again[again.index(k) + 1] for k in ("--tasks", "--episodes-per-task", "--image-size")] == \
        [demos[demos.index(k) + 1] for k in ("--tasks", "--episodes-per-task", "--image-size")]
    assert "--seed" not in again and est.needs == ["data-estimator", "data-layouts"]
    assert est.args[est.args.index("--camera") + 1] == "corner3,corner"
    assert [est.args[i + 1] for i, a in enumerate(est.args) if a == "--data"] == [
        again[again.index("--out") + 1], gen[gen.index("--out") + 1]]
    adapt = jobs["train-wam_repwam_est_s0"].args
    assert adapt[adapt.index("--data") + 1] == demos[demos.index("--out") + 1]  # matched to its estimates by episodes
    assert not any({"data-estimator", "data-layouts"} & set(j.needs) for n, j in jobs.items()
                   if n != "train-estimator")
    with pytest.raises(RepwamError, match="estimator_cameras='corner3,corner'; this asks for estimator_cameras=''"):
        ablation(tmp_path, PipelineConfig(tasks="reach-v3", episodes_per_task=5, estimator_layouts_per_task=40),
                 ["repwam_est"], [0])
    base = ablation(tmp_path, cfg, ["plain_estimator"], [1]).jobs["train-plain_plain_estimator_s1"]
    assert base.needs == ["data", "train-estimator"] and base.args[base.args.index("--estimator") + 1] == \
        adapt[adapt.index("--estimator") + 1]  # the plain baseline reads the same estimator
    assert base.args[base.args.index("--data") + 1] == demos[demos.index("--out") + 1]
    one = ablation(tmp_path / "one", PipelineConfig(tasks="reach-v3", estimator_cameras="corner3"),
                   ["repwam_est"], [0]).jobs  # a view the demonstrations have: nothing rendered again
    assert "data-estimator" not in one and one["train-estimator"].needs == ["data"]
    assert "--targets" not in one["train-estimator"].args  # the default: the whole observation
    pos = ablation(tmp_path / "pos", PipelineConfig(tasks="reach-v3", estimator_targets="positions"),
                   ["repwam_est"], [0]).jobs["train-estimator"].args
    assert pos[pos.index("--targets") + 1] == "positions"
    with pytest.raises(RepwamError, match="estimator_targets='positions'; this asks for estimator_targets='all'"):
        ablation(tmp_path / "pos", PipelineConfig(tasks="reach-v3"), ["repwam_est"], [0])


def test_pretraining_videos_feed_the_tokenizer_lat_and_pretraining_and_demonstrations_the_rest(tmp_path):
    cfg = PipelineConfig(tasks="reach-v3", episodes_per_task=5, video_episodes_per_task=50)
    p = ablation(tmp_path, cfg, ["repwam", "joint", "plain"], [0])
    jobs = p.jobs

    def data(name):
        args = jobs[name].args
        return Path(args[args.index("--data") + 1])

    assert p.video != p.data
    assert data("train-tok_default") == data("train-lat_default") == data("train-wampre_repwam_s0") == p.video
    assert data("train-wam_repwam_s0") == data("train-wam_joint_s0") == data("train-plain_plain_s0") == p.data
    gen = jobs["data-video"].args
    assert gen[gen.index("--episodes-per-task") + 1] == "50" and Path(gen[gen.index("--out") + 1]) == p.video
    assert jobs["data"].args[jobs["data"].args.index("--episodes-per-task") + 1] == "5"
    assert jobs["train-tok_default"].needs == ["data-video"] and "data" in jobs["train-wam_repwam_s0"].needs
    plain = ablation(tmp_path / "plain", PipelineConfig(tasks="reach-v3"), ["repwam"], [0])
    assert plain.video == plain.data and "data-video" not in plain.jobs
    with pytest.raises(RepwamError, match="video_episodes_per_task=3 must be 0 .* or >= episodes_per_task=5"):
        ablation(tmp_path / "few", PipelineConfig(tasks="reach-v3", episodes_per_task=5, video_episodes_per_task=3),
                 ["repwam"], [0])


def test_a_dataset_made_with_other_settings_is_refused(tmp_path):
    import json

    cfg = PipelineConfig(tasks="reach-v3", episodes_per_task=20)
    meta = ablation(tmp_path, cfg, ["plain"], [0]).data / "meta"
    meta.mkdir(parents=True)
    settings = {"episodes_per_task": 20, "image_size": 64, "cameras": ["corner3"], "seed": 0}
    (meta / "repwam_generation.json").write_text(json.dumps({"settings": settings}))
    ablation(tmp_path, cfg, ["plain"], [0])  # the same settings: reused
    with pytest.raises(RepwamError, match=r"generated with episodes_per_task=20, image_size=64; .* asks for "
                                          r"episodes_per_task=60, image_size=128"):
        ablation(tmp_path, PipelineConfig(tasks="reach-v3", episodes_per_task=60, image_size=128), ["plain"], [0])
    # a dataset from before `action_noise` existed is a clean one: refused for noisy demonstrations
    with pytest.raises(RepwamError, match=r"generated with action_noise=0.0; .* asks for action_noise=0.5"):
        ablation(tmp_path, PipelineConfig(tasks="reach-v3", episodes_per_task=20, action_noise=0.5), ["plain"], [0])
    noisy = PipelineConfig(tasks="reach-v3", episodes_per_task=20, action_noise=0.5)
    assert "--action-noise" in ablation(tmp_path / "n", noisy, ["plain"], [0]).jobs["data"].args


def _eval_result(root, run, rates, n=10):
    """A (row, seed)'s `eval/<run>/results.json` as `repwam eval policy` writes it (the fields the table reads)."""
    import json

    f = root / "eval" / run / "results.json"
    f.parent.mkdir(parents=True)
    tasks = {t: {"success_rate": r, "successes": round(r * n), "episodes": n} for t, r in rates.items()}
    s = sum(v["successes"] for v in tasks.values())
    f.write_text(json.dumps({"tasks": tasks, "mean": {"success_rate": sum(rates.values()) / len(rates),
                                                      "successes": s, "episodes": n * len(rates)}}))


def test_the_table_and_plot_come_from_the_per_seed_results(tmp_path):
    import json

    from repwam.train.pipeline import ablation_summary, ablation_table, plot_ablation

    def result(run, rates):
        _eval_result(tmp_path, run, rates)

    result("wam_repwam_s0", {"reach-v3": 0.2, "push-v3": 0.4})
    result("wam_repwam_s1", {"reach-v3": 0.4, "push-v3": 0.6})
    result("plain_plain_s0", {"reach-v3": 0.1, "push-v3": 0.1})
    result("plain_plain_goal_s0", {"reach-v3": 0.9, "push-v3": 0.7})
    summary = ablation_summary(tmp_path, ["repwam", "plain", "joint", "plain_goal"], [0, 1, 2])
    assert list(summary) == ["repwam", "plain", "plain_goal"] and summary["plain_goal"]["0"]["mean"] == 0.8
    del summary["plain_goal"]
    assert list(summary) == ["repwam", "plain"] and list(summary["repwam"]) == ["0", "1"]
    assert summary["repwam"]["1"] == {"mean": 0.5, "successes": 10, "episodes": 20,
                                      "tasks": {"reach-v3": 0.4, "push-v3": 0.6}}
    table = ablation_table(json.loads(json.dumps(summary))).splitlines()  # survives a JSON round trip (committed)
    assert table[0].startswith("| row | seeds | mean success") and table[0].endswith("| reach | push |")
    assert table[2].startswith("| repwam | 2 | 0.400 ± 0.141 | 16/40 (") and table[2].endswith("| 0.30 | 0.50 |")
    assert table[3].startswith("| plain | 1 | 0.100 | 2/20 (")
    assert plot_ablation(summary, tmp_path / "a.png").stat().st_size > 1000
    earlier = {"joint": {"reported": {"mean": 0.55, "std": 0.01, "seeds": 3}}, **summary}
    assert plot_ablation(earlier, tmp_path / "b.png").stat().st_size > 1000
    assert ablation_table({}) == "(no finished (row, seed) yet)"


def test_report_only_tabulates_results_copied_in_and_runs_nothing(tmp_path):
    """Seeds run on different machines (or sittings) end up in one table: copy their `eval/<run>/` folders into one
    --out and `repwam ablate --report-only` writes the table, summary and plot from them without training."""
    import json

    from typer.testing import CliRunner

    from repwam.cli import app

    _eval_result(tmp_path, "wam_repwam_s0", {"reach-v3": 0.2, "push-v3": 0.4})
    _eval_result(tmp_path, "wam_repwam_s2", {"reach-v3": 0.4, "push-v3": 0.4})
    _eval_result(tmp_path, "plain_plain_s1", {"reach-v3": 0.1, "push-v3": 0.0})
    args = ["ablate", "--out", str(tmp_path), "--rows", "repwam", "plain", "--seeds", "0", "1", "2", "--report-only"]
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "| repwam | 2 | 0.350 ± 0.071 | 14/40 (" in r.output and "| plain | 1 | 0.050 | 1/20 (" in r.output
    assert (tmp_path / "table.md").read_text().strip() == r.output.strip()
    assert set(json.loads((tmp_path / "summary.json").read_text())["repwam"]) == {"0", "2"}
    assert (tmp_path / "ablation.png").exists()
    assert not any((tmp_path / name).exists() for name in ("runs", "data", "pipeline.json"))
    for bad, msg in [(["--out", str(tmp_path / "empty")], "nothing evaluated under"),
                     (["--out", str(tmp_path), "--rows", "repwam", "bogus"], "unknown ablation rows ['bogus']")]:
        r = CliRunner().invoke(app, ["ablate", *bad, "--report-only"])
        assert r.exit_code != 0 and msg in r.output + str(r.exception)


def test_sigterm_stops_the_running_jobs_with_the_pipeline(tmp_path):
    """A pipeline that is killed (SIGTERM: a scheduler, `kill`) terminates its running jobs' processes instead of
    leaving them to write on into run directories that the next sitting resumes."""
    import os
    import signal
    import sys
    import time

    p = Pipeline(tmp_path / "run", PipelineConfig(jobs=1))
    p.add("sleep", ["noop"], p.out / "sleep.done")
    pid_file = tmp_path / "pid"
    p._command = lambda job, cores=1: [sys.executable, "-c", f"import os, time; open({str(pid_file)!r}, 'w')"
                                       f".write(str(os.getpid())); time.sleep(120)"]

    def kill_when_started():
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.05)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=kill_when_started, daemon=True).start()
    before = signal.getsignal(signal.SIGTERM)
    t0 = time.time()
    with pytest.raises(SystemExit):
        p.run(progress=False)
    assert time.time() - t0 < 60 and signal.getsignal(signal.SIGTERM) is before
    child = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):  # gone (and reaped), not orphaned
        os.kill(child, 0)
    assert not (p.out / "sleep.done").exists()


def test_a_resumed_training_job_counts_its_earlier_sittings(tmp_path):
    """A training run that resumes adds the loop's seconds of its earlier sittings (`progress.json`) to this
    sitting's, so timings.json is the run's whole time; a fresh run counts this sitting only."""
    p = Pipeline(tmp_path / "run", PipelineConfig(jobs=1))
    run = tmp_path / "run" / "runs" / "x"
    run.mkdir(parents=True)
    (run / "progress.json").write_text('{"step": 2, "steps": 4, "train_seconds": 1000.0}')
    job = p.jobs[p.add("train-x", ["train", "tokenizer", "--help", "--out", str(run)], run / "finished", [])]
    assert p._run(job) < 100  # no training state: the run starts over, the old progress is not its own
    (run / "training_state.pt").write_text("")
    assert "--resume" in p._command(job)
    assert p._run(job) >= 1000


def test_status_says_where_every_job_stands_and_runs_nothing(tmp_path):
    """`--status`: done / to run / skipped for every job, a finished job's minutes, and an unfinished training run's
    step and loop minutes over every sitting (its progress.json); nothing is run or written."""
    from typer.testing import CliRunner

    from repwam.cli import app
    from repwam.train.progress import write_progress

    p = Pipeline(tmp_path / "run", PipelineConfig(jobs=1))
    runs = p.out / "runs"
    a = p.add("train-a", ["train", "x", "--out", str(runs / "a")], runs / "a" / "finished")
    b = p.add("train-b", ["train", "x", "--out", str(runs / "b")], runs / "b" / "finished", [a])
    p.add("eval-c", ["eval", "x"], p.out / "c.json", [b])
    (runs / "b").mkdir(parents=True)
    (runs / "a" / "finished").mkdir(parents=True)  # the proof is there
    write_progress(runs / "b", step=500, steps=2000, train_seconds=600.0)
    p._save_timing("train-a", 120.0)
    rows = {r["job"]: r for r in p.status()}
    assert rows["train-a"] == {"job": "train-a", "state": "done", "minutes": 2.0}
    assert rows["train-b"] == {"job": "train-b", "state": "to run", "step": "500/2000", "minutes": 10.0}
    assert rows["eval-c"] == {"job": "eval-c", "state": "to run"}
    assert "| train-b | to run | 500/2000 | 10.0 |" in p.status_table()
    (p.out / "c.json").write_text("{}")  # its result copied in: b is no longer needed
    assert {r["job"]: r["state"] for r in p.status()}["train-b"] == "skipped"

    out = tmp_path / "abl"
    r = CliRunner().invoke(app, ["ablate", "--out", str(out), "--rows", "plain", "--seeds", "0", "--tasks",
                                 "reach-v3", "--status"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert "| data | to run |" in r.output and "| train-plain_plain_s0 | to run |" in r.output
    assert not out.exists()


def test_runs_and_results_trained_with_other_settings_are_refused(tmp_path):
    """A finished job is skipped, so what a run under --out (or a result copied in) was trained with must be what
    its job asks for now: results of another recipe under the same row name (an older default), or of fewer steps,
    would otherwise be reported as this one's. An unfinished run may still be resumed for more steps."""
    import dataclasses
    import json
    import shutil

    from repwam.train.args import train_args
    from repwam.train.trainer import run_record

    cfg = PipelineConfig(tasks="reach-v3", adapt_steps=100)
    job = ablation(tmp_path, cfg, ["adapt_no_ell"], [0]).jobs["train-wam_adapt_no_ell_s0"]
    args = job.args[2:]
    i = args.index("--ell-drop")
    other_recipe = args[:i] + ["--ell-drop", "0.25"] + args[i + 2:]  # ℓ denoised beside the actions

    def record(args, where):
        c, data, *_ = train_args("wam", args)
        where.parent.mkdir(parents=True, exist_ok=True)
        where.write_text(json.dumps(run_record(c, "train wam", data)))

    run_json = job.run_dir / "run.json"
    record(args, run_json)  # as asked
    ablation(tmp_path, cfg, ["adapt_no_ell"], [0])
    more = dataclasses.replace(cfg, adapt_steps=200)
    ablation(tmp_path, more, ["adapt_no_ell"], [0])  # unfinished: resumed for more steps
    job.done.write_text("{}")
    with pytest.raises(RepwamError, match=r"train-wam_adapt_no_ell_s0: .*run.json has optim.steps=100 \(asked: 200\)"):
        ablation(tmp_path, more, ["adapt_no_ell"], [0])
    record(other_recipe, run_json)
    with pytest.raises(RepwamError, match=r"other settings than asked for now:\n.*ell_drop=0.25 \(asked: 1.0\)"):
        ablation(tmp_path, cfg, ["adapt_no_ell"], [0], record=False)  # --status too
    # a result copied in without its run carries the run's settings (kept beside it by the evaluation job)
    shutil.rmtree(job.run_dir)
    ckpt = tmp_path / "elsewhere" / "runs" / "wam_adapt_no_ell_s0" / "checkpoints" / "last"
    record(other_recipe, ckpt.parent.parent / "run.json")
    ev = Job("eval-wam_adapt_no_ell_s0", ["eval", "policy", "--checkpoint", str(ckpt)],
             tmp_path / "eval" / "wam_adapt_no_ell_s0" / "results.json")
    ev.done.parent.mkdir(parents=True)
    Pipeline.keep_run_config(ev)
    with pytest.raises(RepwamError, match=r"eval/wam_adapt_no_ell_s0/run.json has ell_drop=0.25 \(asked: 1.0\)"):
        ablation(tmp_path, cfg, ["adapt_no_ell"], [0])
    # input paths are the jobs a run needs, checked in their own right (a run linked in from another --out records
    # that one's paths)
    moved = [a.replace(str(tmp_path), "/another/out") for a in args]
    record(moved, ev.done.parent / "run.json")
    ablation(tmp_path, cfg, ["adapt_no_ell"], [0])
    # results from before ℓ was left out by default recorded ell_drop None (or, older, nothing) for the model's 0.25:
    # read as such, they are repwam_ell's, and refused as repwam's
    new = ablation(tmp_path / "legacy", cfg, ["repwam", "repwam_ell"], [0])
    ell_args = new.jobs["train-wam_repwam_ell_s0"].args[2:]
    for legacy in ({"ell_drop": None}, {}):
        for row in ("repwam", "repwam_ell"):
            f = tmp_path / "legacy" / "eval" / f"wam_{row}_s0" / "run.json"
            record(ell_args, f)
            rec = {k: v for k, v in json.loads(f.read_text()).items() if k != "ell_drop"}
            f.write_text(json.dumps({**rec, **legacy}))
        with pytest.raises(RepwamError, match=r"wam_repwam_s0/run.json has ell_drop=0.25 \(asked: 1.0\)\nuse another"):
            ablation(tmp_path / "legacy", cfg, ["repwam", "repwam_ell"], [0])
        ablation(tmp_path / "legacy", cfg, ["repwam_ell"], [0])
