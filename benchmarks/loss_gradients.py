"""Which objective pulls on which parameters of an adapted WAM: the forecast, ℓ or the robot actions?

    python benchmarks/loss_gradients.py outputs/hard100_12k_b/runs/wam_repwam_s0 \
        --out benchmarks/results/hard_tasks_100demos_12k/loss_gradients.json

For each run (a `repwam train wam --stage adapt` or `joint` directory: its run.json rebuilds the same training clips)
and its checkpoint (`--checkpoint last` or a step), on `--batches` training batches drawn with a fixed seed (chunk
sizes 1-4 in turn; every term the run trained present: no video or ℓ drop), the gradient of each loss term alone
(video, ℓ, robot; each with the same noise), on each parameter group: the attention every stream shares (`shared`: the
self-attention's qkv and output, the text cross-attention), the video stream's own layers (its FFNs, embeddings and
head), the ℓ stream's and the robot stream's. Only matrices (what Muon steps). Per group and term: the gradient's norm
(mean over batches), and per group the mean cosine between two terms' gradients over its matrices. A term whose
gradient is small beside the others' on a group, at a cosine near 0, gets little of that group's training.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

TERMS = {"video": "video_loss_weight", "ell": "ell_loss_weight", "robot": "robot_loss_weight"}


def group(name: str) -> str:
    from repwam.wam.model import WorldActionModel

    if WorldActionModel.is_robot_parameter(name):
        return "robot"
    return "video" if ".video." in name else "ell" if ".action." in name else "shared"


def gradients(run: Path, checkpoint: str, batches: int) -> dict:
    from repwam.config import from_dict, load_run_config
    from repwam.train.wam import WAMStage, WAMTrainConfig
    from repwam.wam.model import WorldActionModel

    spec, data = load_run_config(run, "wam")
    stage = WAMStage(from_dict(WAMTrainConfig, spec), data, progress=False)
    model = WorldActionModel.from_pretrained(run / "checkpoints" / checkpoint).train()
    c = model.cfg  # the terms the run trained: not the forecast with video_drop 1, not ℓ with ell_drop 1
    terms = [t for t, on in (("video", c.video_drop < 1), ("ell", c.use_latent_actions and c.ell_drop < 1),
                             ("robot", bool(c.robot_action_dim))) if on]
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    names = {}  # group -> its matrices' names
    for n, _ in params:
        names.setdefault(group(n), []).append(n)
    groups = sorted(names)
    cos = torch.nn.functional.cosine_similarity
    norms = {g: {t: [] for t in terms} for g in groups}
    cosines = {g: {} for g in groups}
    gen = torch.Generator().manual_seed(0)
    for b in range(batches):
        idx = torch.randint(len(stage.train_set), (stage.cfg.optim.batch_size,), generator=gen).tolist()
        batch = stage.collate_fn([stage.train_set[i] for i in idx])
        chunk = model.cfg.chunk_sizes[b % len(model.cfg.chunk_sizes)]
        grads = {}
        for t in terms:
            for other, key in TERMS.items():
                setattr(model.cfg, key, 1.0 if other == t else 0.0)
            model.zero_grad()
            torch.manual_seed(1000 + b)  # the same noise, flow times and dropouts for every term
            model.loss(batch, chunk_size=chunk, drop_video="video" not in terms,
                       drop_ell="ell" not in terms)["loss"].backward()
            grads[t] = {n: p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p) for n, p in params}
        for g in groups:
            for t in terms:
                norms[g][t].append(sum(float(grads[t][n].norm()) ** 2 for n in names[g]) ** 0.5)
            for i, t1 in enumerate(terms):
                for t2 in terms[i + 1:]:
                    cs = [float(cos(grads[t1][n].flatten(), grads[t2][n].flatten(), 0)) for n in names[g]
                          if grads[t1][n].norm() > 0 and grads[t2][n].norm() > 0]
                    if cs:
                        cosines[g].setdefault(f"{t1}·{t2}", []).append(sum(cs) / len(cs))
    mean = lambda v: round(sum(v) / len(v), 4)  # noqa: E731
    return {g: {"norm": {t: mean(v) for t, v in norms[g].items()},
                "cosine": {k: mean(v) for k, v in cosines[g].items()}} for g in groups}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="adapted or joint WAM run directories (run.json, checkpoints/)")
    ap.add_argument("--checkpoint", default="last", help="a folder under checkpoints/: last, step_0005000, ...")
    ap.add_argument("--batches", type=int, default=8, help="training batches to average over")
    ap.add_argument("--out", type=Path, help="JSON file to write (the runs already in it are kept)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    result = json.loads(args.out.read_text()) if args.out and args.out.exists() else {}
    for run in args.runs:
        result[f"{run}@{args.checkpoint}"] = r = gradients(run, args.checkpoint, args.batches)
        print(f"\n{run} ({args.checkpoint}): gradient norm per term, mean cosine between terms")
        for g, v in r.items():
            print(f"  {g:<7} " + "  ".join(f"{t} {x:.4f}" for t, x in v["norm"].items()) + "   |   "
                  + "  ".join(f"{k} {x:+.3f}" for k, x in v["cosine"].items()))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
