"""`torchrun --nproc_per_node 2` (gloo, CPU) with optim.parallel=fsdp: the tiny world action model trained under
FSDP2 (each block and then the model `fully_shard`ed), exact resume from the sharded training state
(training_state.dcp/), and a weights checkpoint that loads in one plain process."""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import torch
import torch.nn.functional as F

from repwam.errors import RepwamError
from repwam.train.trainer import OptimConfig


def fixed_noise_loss(stage, batch):
    """The WAM's flow loss with nothing drawn at random (chunk size 2, alpha 1/2, zero noise, so the velocity target
    is the clean value; no drops): a mean over independent items, so 2 ranks with half a batch each have the
    gradient of one process with the whole batch."""
    z, ell = batch["z"], batch["ell"]
    half = torch.full(ell.shape[:2], 0.5)
    pred = stage.model(z, ell, batch["text"], batch["text_mask"], chunk_size=2, noisy_z=z[:, 1:] / 2, alpha_z=half,
                       noisy_ell=ell / 2, alpha_ell=half, valid=batch["valid"])
    return {"loss": F.mse_loss(pred["video"].float(), z[:, 1:]) + F.mse_loss(pred["action"].float(), ell)}


def fixed_noise_config(tok, lat, parallel):
    from repwam.train.wam import WAMTrainConfig

    return WAMTrainConfig(tokenizer=str(tok), lat=str(lat), clip_frames=4, attn_window=3, val_fraction=0.34,
                          optim=OptimConfig(steps=3, batch_size=4, lr=1e-3, warmup=1, save_every=3, val_items=8,
                                            grad_clip=1e9, parallel=parallel))  # unclipped: AdamW's moments
                                                                                # keep the gradients' scale


SCRIPT = r'''
import hashlib, json, sys
from pathlib import Path
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict
import repwam.train.trainer as T
from repwam.train.trainer import OptimConfig
from repwam.train.wam import WAMTrainConfig, train_wam

out, data, tok, lat = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
sys.path.insert(0, sys.argv[5])  # the tests
from test_fsdp import fixed_noise_config, fixed_noise_loss
record = {"batches": []}

class Interrupt(Exception):
    pass

forward, calls = T.StageLoss.forward, []
def counted(self, batch):
    calls.append(1)
    if record.get("interrupt_at") == len(calls):  # on every rank at once: no rank waits in a collective
        raise Interrupt
    record["batches"].append(int(batch["z"].shape[0]))
    return forward(self, batch)
T.StageLoss.forward = counted

def full_hash(module):  # the gathered full weights, on every rank
    sd = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True))
    flat = torch.cat([v.detach().flatten().float() for v in sd.values()])
    return hashlib.sha256(flat.numpy().tobytes()).hexdigest()

fit = T.Trainer.fit
def fit_and_dump(self):
    path = fit(self)
    model = self.stage.model
    record[record["run"]] = {
        "model": full_hash(model), "ema": self.ema and full_hash(self.ema),
        "local_numel": sum(p.to_local().numel() for p in model.parameters()),
        "numel": sum(p.numel() for p in model.parameters()),
        "param_type": type(next(model.parameters())).__name__}
    adam = get_optimizer_state_dict(model, self.optimizers, options=StateDictOptions(full_state_dict=True))["state"]
    record[record["run"]]["exp_avg"] = sum(float(s["exp_avg"].abs().sum()) for s in adam.values() if "exp_avg" in s)
    if self.main:  # a fixed batch and the loss rank 0's plain copy (the checkpoint's weights) gives on it
        clips = self.stage.val_set
        batch = self.stage.collate_fn([clips[i] for i in range(4)])
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            losses = self.plain.eval().loss(batch, chunk_size=2, drop_video=False)
        torch.save(batch, out / f"{record['run']}_batch.pt")
        record[record["run"]]["plain_loss"] = {k: float(v) for k, v in losses.items()}
    return path
T.Trainer.fit = fit_and_dump

def cfg():
    return WAMTrainConfig(tokenizer=tok, lat=lat, clip_frames=4, attn_window=3, val_fraction=0.34,
                          optim=OptimConfig(steps=4, batch_size=4, optimizer="muon", lr=1e-3, muon_lr=0.01, warmup=1,
                                            save_every=2, log_every=1, val_items=8, ema=0.9, parallel="fsdp"))

record["run"] = "straight"
train_wam(cfg(), [data], out / "a", progress=False)
record["run"], record["interrupt_at"], calls[:] = "resumed", 3, []
try:  # stopped in step 3, after the step-2 save
    train_wam(cfg(), [data], out / "b", progress=False)
except Interrupt:
    record["interrupted_state"] = sorted(p.name for p in (out / "b" / "training_state.dcp").iterdir())
record["interrupt_at"] = None
train_wam(cfg(), [data], out / "b", resume=True, progress=False)
record["run"] = "fixed_noise"
from repwam.train.wam import WAMStage
WAMStage.loss = fixed_noise_loss
train_wam(fixed_noise_config(tok, lat, parallel="fsdp"), [data], out / "fixed_noise", progress=False)
rank = torch.distributed.get_rank()
(out / f"rank{rank}.json").write_text(json.dumps(record))
'''


def test_fsdp_two_ranks_resume_and_one_process_checkpoint(tiny_dataset, tiny_tokenizer, tiny_lat, tmp_path):
    from conftest import torchrun
    from repwam.train.wam import prepare_caches
    from repwam.wam.model import WorldActionModel

    prepare_caches(str(tiny_tokenizer), str(tiny_lat), [tiny_dataset], progress=False)  # the caches both ranks read
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = torchrun(script, [tiny_dataset, tiny_tokenizer, tiny_lat, os.path.dirname(__file__)], tmp_path)
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    a0, a1 = r0["straight"], r1["straight"]
    assert a0["param_type"] == "DTensor" and a0["local_numel"] + a1["local_numel"] == a0["numel"], "sharded in two"
    assert a0["model"] == a1["model"] and a0["ema"] == a1["ema"], "both ranks hold the same full weights"
    # 4 straight steps, 2 + (interrupted) + 2 resumed, 3 with fixed noise: 2 items per rank per step
    assert r0["batches"] == r1["batches"] == [2] * (4 + 2 + 2 + 3)
    assert r0["interrupted_state"] == [".metadata", "__0_0.distcp", "__1_0.distcp", "trainer.pt"]
    assert r0["resumed"]["model"] == a0["model"] and r0["resumed"]["ema"] == a0["ema"], "exact resume"
    assert not (out / "a" / "training_state.pt").exists()
    # the weights checkpoint (the EMA weights, gathered) in one plain process: the same losses on the same batch
    model = WorldActionModel.from_pretrained(out / "a" / "checkpoints" / "last")
    flat = torch.cat([v.detach().flatten().float() for v in model.state_dict().values()])
    assert hashlib.sha256(flat.numpy().tobytes()).hexdigest() == a0["ema"], "the checkpoint holds the EMA weights"
    assert json.loads((out / "a" / "checkpoints" / "last" / "config.json").read_text())["step"] == 4
    batch = torch.load(out / "straight_batch.pt", weights_only=False)
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        losses = model.loss(batch, chunk_size=2, drop_video=False)
    # (the same weights, checked bit for bit above; the loss in another process agrees to float rounding)
    assert {k: float(v) for k, v in losses.items()} == pytest.approx(a0["plain_loss"], rel=1e-6, abs=1e-7)
    # FSDP's arithmetic: with the random draws taken out of the loss, 3 AdamW steps on 2 ranks (half a batch each,
    # gradients reduce-scattered, AdamW on the shards) reach the moments and weights of one plain process
    from repwam.train.wam import WAMStage, train_wam

    assert r0["fixed_noise"]["model"] == r1["fixed_noise"]["model"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(WAMStage, "loss", fixed_noise_loss)
        one = train_wam(fixed_noise_config(tiny_tokenizer, tiny_lat, "ddp"), [tiny_dataset], tmp_path / "one",
                        progress=False)
    adam = torch.load(tmp_path / "one" / "training_state.pt", weights_only=False)["optimizers"][0]["state"]
    exp_avg = sum(float(s["exp_avg"].abs().sum()) for s in adam.values())
    assert exp_avg > 0
    assert r0["fixed_noise"]["exp_avg"] == pytest.approx(exp_avg, rel=1e-4), "the gradients' scale: a mean over ranks"
    a = WorldActionModel.from_pretrained(one).state_dict()
    b = WorldActionModel.from_pretrained(out / "fixed_noise" / "checkpoints" / "last").state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-5, msg=k)


def test_parallel_setting_is_checked_and_one_process_ignores_it(tiny_tokenizer, tiny_dataset, tmp_path):
    """A bad value and a model FSDP2 cannot shard (the LAT's scalar parameter) are clear errors; in one process
    there is nothing to shard, so parallel=fsdp trains exactly as ddp (the plain path)."""
    from repwam.lat.model import LATConfig, LatentActionTokenizer
    from repwam.train.lat import LATTrainConfig, train_lat
    from repwam.train.trainer import shard

    with pytest.raises(RepwamError, match="optim.parallel must be one of"):
        OptimConfig(parallel="zero3")
    with pytest.raises(RepwamError, match=r"cannot shard LatentActionTokenizer.*match_logit_scale.*parallel=ddp"):
        shard(LatentActionTokenizer(LATConfig.preset("tiny", latent_dim=8, num_tokens=16)), mesh=None)
    runs = []
    for parallel in ("ddp", "fsdp"):
        cfg = LATTrainConfig(tokenizer=str(tiny_tokenizer), val_fraction=0.34,
                             optim=OptimConfig(steps=2, batch_size=16, warmup=1, save_every=2, val_items=16,
                                               parallel=parallel))
        runs.append(LatentActionTokenizer.from_pretrained(train_lat(cfg, [tiny_dataset], tmp_path / parallel,
                                                                    progress=False)).state_dict())
        assert (tmp_path / parallel / "training_state.pt").exists()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
