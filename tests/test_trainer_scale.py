"""Trainer settings for scale on tiny sizes: gradient accumulation, torch.compile, activation checkpointing."""

from __future__ import annotations

import pytest
import torch

from repwam.errors import RepwamError
from repwam.lat.model import LatentActionTokenizer
from repwam.train.lat import LATStage, LATTrainConfig, train_lat
from repwam.train.trainer import OptimConfig, ResumableBatches


def lat_config(tokenizer, **optim):
    return LATTrainConfig(tokenizer=str(tokenizer), val_fraction=0.34,
                          optim=OptimConfig(**{**dict(steps=1, batch_size=16, lr=3e-3, warmup=1, save_every=1,
                                                      log_every=1, val_items=16), **optim}))


def test_micro_batches_split_each_global_batch_and_resume():
    """Per step, the micro-batches of all ranks together are exactly the one-process batch, from any start step."""
    one = ResumableBatches(40, 8, seed=3)
    ranks = [ResumableBatches(40, 8, seed=3, rank=r, world=2, accum=2) for r in range(2)]
    it_one, its = iter(one), [iter(s) for s in ranks]
    for _ in range(12):  # more than one epoch (5 batches each)
        micro = [[next(it) for _ in range(2)] for it in its]
        assert [len(m) for r in micro for m in r] == [2, 2, 2, 2]
        assert [i for r in micro for m in r for i in m] == next(it_one)
    tail = [next(iter(ResumableBatches(40, 8, seed=3, start_step=7, rank=1, world=2, accum=2))) for _ in range(1)]
    full = iter(ResumableBatches(40, 8, seed=3, rank=1, world=2, accum=2))
    assert tail[0] == [next(full) for _ in range(2 * 7 + 1)][-1]
    with pytest.raises(RepwamError, match="does not split into 2 processes x 3 micro-batches"):
        ResumableBatches(40, 8, seed=3, world=2, accum=3)
    with pytest.raises(RepwamError, match="accum_steps must be >= 1"):
        OptimConfig(accum_steps=0)


def test_accumulated_step_equals_one_big_batch(tiny_tokenizer, tiny_dataset, tmp_path, monkeypatch):
    """One AdamW step on 16 items as 2 micro-batches of 8 = the same step on one batch of 16. The LAT's loss is a
    mean over independent items with no random draws, so the two gradients agree up to float rounding. Besides the
    weights (AdamW's first step is nearly sign(g), blind to the gradient's scale), the optimiser's moments are
    compared: they hold the gradient itself, so a wrong 1/accum_steps or a lost micro-batch shows there."""
    seen = []
    real = LATStage.loss
    monkeypatch.setattr(LATStage, "loss", lambda self, batch: seen.append(len(batch["z"])) or real(self, batch))
    runs = {}
    for accum in (1, 2):
        ckpt = train_lat(lat_config(tiny_tokenizer, accum_steps=accum), [tiny_dataset], tmp_path / f"a{accum}",
                         progress=False)
        state = torch.load(tmp_path / f"a{accum}" / "training_state.pt", weights_only=False)
        runs[accum] = LatentActionTokenizer.from_pretrained(ckpt).state_dict(), state["optimizers"][0]["state"]
    assert seen == [16, 8, 8]
    (w1, opt1), (w2, opt2) = runs[1], runs[2]
    assert sum(float(s["exp_avg"].abs().sum()) for s in opt1.values()) > 0, "a gradient reached the optimiser"
    for k in w1:
        # atol: an element whose gradient is near AdamW's eps (1e-8) moves by lr * g / (|g| + eps), where float
        # rounding of the two sums shows at ~1e-6; a wrong step would differ by ~lr = 3e-3
        torch.testing.assert_close(w2[k], w1[k], rtol=0, atol=1e-5, msg=k)
    assert opt1.keys() == opt2.keys()
    for i in opt1:
        for m in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt2[i][m], opt1[i][m], rtol=1e-4, atol=1e-9)


def test_accumulated_run_resumes_exactly(tiny_tokenizer, tiny_dataset, tmp_path, monkeypatch):
    """Interrupted between the micro-batches of step 3 and resumed from the step-2 state: the same weights."""
    calls = []
    real = LATStage.loss

    def interrupt_once(self, batch):
        calls.append(1)
        if len(calls) == 6:  # step 3's second micro-batch of the second run
            raise KeyboardInterrupt
        return real(self, batch)

    cfg = lat_config(tiny_tokenizer, steps=4, save_every=2, accum_steps=2)
    a = train_lat(cfg, [tiny_dataset], tmp_path / "a", progress=False)
    monkeypatch.setattr(LATStage, "loss", interrupt_once)
    with pytest.raises(KeyboardInterrupt):
        train_lat(cfg, [tiny_dataset], tmp_path / "b", progress=False)
    b = train_lat(cfg, [tiny_dataset], tmp_path / "b", resume=True, progress=False)
    wa = LatentActionTokenizer.from_pretrained(a).state_dict()
    wb = LatentActionTokenizer.from_pretrained(b).state_dict()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_compiled_blocks_train_like_eager_and_save_plain_keys(tiny_tokenizer, tiny_dataset, tmp_path, monkeypatch):
    """optim.compile: the LAT's residual blocks run through inductor, 2 steps reach the eager weights (up to the
    fused kernels' rounding) and the checkpoint holds the eager keys (no `_orig_mod.`)."""
    import time

    import torch._dynamo

    import repwam.train.trainer as T

    compiled = []
    real = T.compile_blocks
    monkeypatch.setattr(T, "compile_blocks", lambda model: compiled.extend(real(model)) or compiled)
    torch._dynamo.reset()
    eager = train_lat(lat_config(tiny_tokenizer, steps=2), [tiny_dataset], tmp_path / "eager", progress=False)
    t0 = time.perf_counter()
    ckpt = train_lat(lat_config(tiny_tokenizer, steps=2, compile=True), [tiny_dataset], tmp_path / "c", progress=False)
    print(f"compiled LAT run: {time.perf_counter() - t0:.1f} s")
    assert [type(b).__name__ for b in compiled] == ["MLPBlock"] * 4
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 1, "the blocks ran through torch.compile"
    a = LatentActionTokenizer.from_pretrained(eager).state_dict()
    b = LatentActionTokenizer.from_pretrained(ckpt).state_dict()
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)


@pytest.mark.slow
def test_compiled_wam_trains_like_eager(tiny_tokenizer, tiny_lat, tiny_dataset, tmp_path):
    """The WAM's MoT blocks under torch.compile (~55 s on a busy CPU core with a cold inductor cache, mostly
    compiling): 2 AdamW steps reach the eager weights (a weight moves by ~1e-3; compiled rounding moved them by
    < 1e-6). The loss's random draws (chunk size, drops, noise) happen outside the blocks, in eager code, so both
    runs draw the same. AdamW, not Muon: orthogonalising a nearly low-rank gradient amplifies rounding (1e-4 on
    3e-3 seen with Muon)."""
    from repwam.train.wam import WAMTrainConfig, train_wam
    from repwam.wam.model import WorldActionModel

    def run(name, compile):
        cfg = WAMTrainConfig(tokenizer=str(tiny_tokenizer), lat=str(tiny_lat), clip_frames=4, attn_window=3,
                             val_fraction=0.34,
                             optim=OptimConfig(steps=2, batch_size=4, lr=1e-3, warmup=1, save_every=2, val_items=8,
                                               compile=compile))
        return WorldActionModel.from_pretrained(train_wam(cfg, [tiny_dataset], tmp_path / name, progress=False))

    a, b = run("eager", False).state_dict(), run("compiled", True).state_dict()
    assert list(a) == list(b)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)


def test_tokenizer_gradients_equal_with_activation_checkpointing(monkeypatch):
    """RepViTok's encoder and decoder blocks recomputed in backward: the same gradients, one recompute per block."""
    import repwam.tokenizer.model as M
    from repwam.tokenizer import RepViTok, TokenizerConfig

    calls = []
    real = M.checkpoint
    monkeypatch.setattr(M, "checkpoint", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    torch.manual_seed(0)
    model = RepViTok(TokenizerConfig.preset("tiny")).train()
    x = torch.rand(2, 5, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def grads(on):
        model.grad_checkpoint = on
        model.zero_grad()
        recon, z = model(x)
        ((recon - x).abs().mean() + z.pow(2).mean()).backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    plain = grads(False)
    assert not calls
    ckpt = grads(True)
    assert len(calls) == 2 * model.cfg.depth
    assert plain.keys() == ckpt.keys() and len(plain) == len(list(model.parameters()))
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], msg=k)


def test_wam_activation_checkpointing_same_step_config_untouched(tiny_tokenizer, tiny_lat, tiny_dataset, tmp_path,
                                                                   monkeypatch):
    """optim.activation_checkpointing on the WAM: one step gives the gradients (AdamW's first moment) and weights of
    a run without; its blocks were recomputed; the saved config keeps grad_checkpoint=False."""
    import json

    import repwam.wam.model as M
    from repwam.train.wam import WAMTrainConfig, train_wam
    from repwam.wam.model import WorldActionModel

    calls = []
    real = M.checkpoint
    monkeypatch.setattr(M, "checkpoint", lambda *a, **kw: calls.append(1) or real(*a, **kw))

    def run(name, on):
        cfg = WAMTrainConfig(tokenizer=str(tiny_tokenizer), lat=str(tiny_lat), clip_frames=4, attn_window=3,
                             val_fraction=0.34, optim=OptimConfig(steps=1, batch_size=4, lr=1e-3, warmup=1,
                                                                  save_every=1, val_items=8,
                                                                  activation_checkpointing=on))
        ckpt = train_wam(cfg, [tiny_dataset], tmp_path / name, progress=False)
        state = torch.load(tmp_path / name / "training_state.pt", weights_only=False)["optimizers"][0]["state"]
        return ckpt, WorldActionModel.from_pretrained(ckpt).state_dict(), state

    _, w0, opt0 = run("plain", False)
    assert not calls
    ckpt, w1, opt1 = run("ckpt", True)
    assert len(calls) == WorldActionModel.from_pretrained(ckpt).cfg.depth, "each block recomputed once"
    assert json.loads((ckpt / "config.json").read_text())["wam"]["grad_checkpoint"] is False
    for i in opt0:
        torch.testing.assert_close(opt1[i]["exp_avg"], opt0[i]["exp_avg"], rtol=1e-5, atol=1e-9)
    for k in w0:
        torch.testing.assert_close(w1[k], w0[k], rtol=0, atol=1e-6, msg=k)
    with pytest.raises(RepwamError, match="LatentActionTokenizer has no activation checkpointing"):
        train_lat(lat_config(tiny_tokenizer, activation_checkpointing=True), [tiny_dataset], tmp_path / "lat",
                  progress=False)


def test_time_budget_cuts_steps_keeps_the_schedule_and_resumes(tiny_tokenizer, tiny_dataset, tmp_path, monkeypatch):
    """optim.minutes: the seconds per step measured over the calibration steps fix how many steps fit the budget;
    the cosine ends at the new last step, and a resumed run keeps that length (it does not calibrate again)."""
    import repwam.train.trainer as trainer

    clock = {"t": 0.0}
    real = LATStage.loss

    def slow_loss(self, batch):  # every step "takes" one second of the fake clock
        clock["t"] += 1.0
        return real(self, batch)

    monkeypatch.setattr(LATStage, "loss", slow_loss)
    monkeypatch.setattr(trainer.time, "perf_counter", lambda: clock["t"])
    cfg = lat_config(tiny_tokenizer, steps=100, minutes=0.5, save_every=50)  # 30 s at 1 s/step: 30 steps
    ckpt = train_lat(cfg, [tiny_dataset], tmp_path / "run", progress=False)
    state = torch.load(tmp_path / "run" / "training_state.pt", weights_only=False)
    assert (state["step"], state["steps"]) == (30, 30)
    assert LatentActionTokenizer.read_checkpoint_config(ckpt)["step"] == 30
    sched = state["schedulers"][0]
    assert sched["_last_lr"][0] == pytest.approx(sched["base_lrs"][0] * cfg.optim.min_lr_ratio)
    calls = clock["t"]
    train_lat(cfg, [tiny_dataset], tmp_path / "run", resume=True, progress=False)
    assert clock["t"] == calls, "the resumed run trained past the length its budget fixed"
    # a budget already spent when the length is fixed (15 s of 3 s): one more step, and the run ends on its save
    spent = train_lat(lat_config(tiny_tokenizer, steps=100, minutes=0.05, save_every=50), [tiny_dataset],
                      tmp_path / "spent", progress=False)
    assert LatentActionTokenizer.read_checkpoint_config(spent)["step"] == 16
    with pytest.raises(RepwamError, match="optim.minutes must be > 0"):
        OptimConfig(minutes=0)


def test_bf16_auto_is_taken_only_where_it_is_native(monkeypatch, capsys):
    """optim.bf16 None (the tokenizer's default) resolves per device: bf16 where the device computes it natively,
    fp32 where it would be emulated (an AVX2-only CPU runs bf16 matmuls ~35x slower); an explicit True is kept,
    with a warning where it is slow; an explicit False is never overridden."""
    from repwam.train import trainer
    from repwam.train.tokenizer import TokenizerTrainConfig

    assert TokenizerTrainConfig().optim.bf16 is None and trainer.OptimConfig().bf16 is False
    for native in (True, False):
        monkeypatch.setattr(trainer, "bf16_is_fast", lambda device_type, native=native: native)
        assert trainer.resolve_bf16(None, "cpu") is native
        assert trainer.resolve_bf16(False, "cpu") is False
        assert trainer.resolve_bf16(True, "cpu") is True
        assert ("emulated" in capsys.readouterr().out) is (not native)
    monkeypatch.undo()
    # the real check answers quickly and consistently on this machine
    assert trainer.bf16_is_fast("cpu") == trainer.bf16_is_fast("cpu") and trainer.bf16_is_fast("meta") is False
