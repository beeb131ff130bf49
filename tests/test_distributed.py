"""`torchrun --nproc_per_node 2` (gloo, CPU) through the one trainer: the ranks stay in sync, each takes half of
every global batch (also as accumulated micro-batches), and the checkpoint loads in a single process and gives the
rank's outputs."""

from __future__ import annotations

import json

import torch

SCRIPT = r'''
import hashlib, json, os, sys
from pathlib import Path
import torch
import repwam.train.trainer as T
from repwam.train.lat import LATTrainConfig, train_lat

out = Path(sys.argv[1])
seen = []
forward = T.StageLoss.forward
def record(self, batch):
    seen.append(int(batch["z"].shape[0]))
    return forward(self, batch)
T.StageLoss.forward = record
from torch.nn.parallel import DistributedDataParallel as DDP
no_sync = DDP.no_sync
unsynced = []
def count_no_sync(self):
    unsynced.append(1)
    return no_sync(self)
DDP.no_sync = count_no_sync
fit = T.Trainer.fit
def fit_and_dump(self):
    path = fit(self)
    params = torch.cat([p.detach().flatten() for p in self.stage.model.parameters()])
    z = self.stage.val_set[0]["z"][None]
    with torch.no_grad():
        ell = self.stage.model.eval()(z)
    (out / f"rank{self.rank}.json").write_text(json.dumps({
        "hash": hashlib.sha256(params.numpy().tobytes()).hexdigest(), "batches": seen, "world": self.world,
        "no_sync": len(unsynced),
        "ell": ell.flatten().tolist()}))
    return path
T.Trainer.fit = fit_and_dump
cfg = LATTrainConfig(tokenizer=sys.argv[3], val_fraction=0.34)
cfg.optim.steps, cfg.optim.batch_size, cfg.optim.save_every, cfg.optim.val_items = 6, 16, 3, 16
cfg.optim.accum_steps, cfg.optim.warmup = int(sys.argv[4]), 1
train_lat(cfg, [sys.argv[2]], out / "run", progress=False)
'''


def run_ranks(tmp_path, tiny_dataset, tiny_tokenizer, accum_steps: int = 1):
    """Run SCRIPT on 2 ranks; returns the run's directory and what each rank recorded."""
    from conftest import torchrun
    from repwam.tokenizer.tokenize import tokenize_dataset

    tokenize_dataset(tiny_tokenizer, tiny_dataset, progress=False)  # the cache both ranks read
    script = tmp_path / "run.py"
    script.write_text(SCRIPT)
    out = torchrun(script, [tiny_dataset, tiny_tokenizer, accum_steps], tmp_path)
    return out, [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_torchrun_two_ranks_stay_in_sync(tiny_dataset, tiny_tokenizer, tmp_path):
    from repwam.lat.model import LatentActionTokenizer

    out, (r0, r1) = run_ranks(tmp_path, tiny_dataset, tiny_tokenizer)
    assert r0["world"] == r1["world"] == 2
    assert r0["hash"] == r1["hash"], "identical parameters on both ranks after 6 steps"
    assert r0["batches"] == r1["batches"] == [8] * 6, "each rank takes half of every global batch of 16"
    assert r0["no_sync"] == 0
    # the checkpoint (written by rank 0) loads in one process and gives the same outputs
    model = LatentActionTokenizer.from_pretrained(out / "run" / "checkpoints" / "last")
    params = torch.cat([p.detach().flatten() for p in model.parameters()])
    import hashlib

    assert hashlib.sha256(params.numpy().tobytes()).hexdigest() == r0["hash"]
    state = torch.load(out / "run" / "training_state.pt", weights_only=False)
    assert state["step"] == 6 and len(state["rank_rngs"]) == 2


def test_torchrun_accumulation_matches_one_process(tiny_dataset, tiny_tokenizer, tmp_path):
    """2 ranks x 2 micro-batches of 4 per step reach the weights of one process taking batches of 16 (the LAT's loss
    is a mean over items with no random draws), gradients averaged over ranks once per step."""
    from repwam.lat.model import LatentActionTokenizer
    from repwam.train.lat import LATTrainConfig, train_lat

    out, (r0, r1) = run_ranks(tmp_path, tiny_dataset, tiny_tokenizer, accum_steps=2)
    assert r0["hash"] == r1["hash"]
    assert r0["batches"] == r1["batches"] == [4] * 12
    assert r0["no_sync"] == r1["no_sync"] == 6, "no gradient all-reduce on the first micro-batch of each step"
    cfg = LATTrainConfig(tokenizer=str(tiny_tokenizer), val_fraction=0.34)
    cfg.optim.steps, cfg.optim.batch_size, cfg.optim.save_every, cfg.optim.val_items = 6, 16, 3, 16
    cfg.optim.warmup = 1
    one = train_lat(cfg, [tiny_dataset], tmp_path / "one", progress=False)
    a = LatentActionTokenizer.from_pretrained(one).state_dict()
    b = LatentActionTokenizer.from_pretrained(out / "run" / "checkpoints" / "last").state_dict()
    # atol: 6 AdamW steps at lr 1e-3 move a weight by up to 6e-3; float rounding moves the bias of the attention
    # keys (zero gradient in exact arithmetic, as softmax ignores a shift shared by all keys) by ~1e-5
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-4, msg=k)
