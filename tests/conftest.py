"""Shared fixtures. The tiny Meta-World dataset is generated once per test session (shared by xdist workers)."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("MUJOCO_GL", "osmesa")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Two xdist workers share two cores: one thread each. (Two threads per process on a busy 2-core machine made
# tiny training steps ~10x slower.)
torch.set_num_threads(1)

TINY_TASKS = ["reach-v3", "drawer-open-v3", "button-press-topdown-v3"]
TINY_EPISODES = 3


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory) -> Path:
    """A directory shared by all xdist workers of this session."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base
    d = root / "shared"
    d.mkdir(exist_ok=True)
    return d


def _once(path: Path, make) -> Path:
    """Build `path` with make(path) exactly once across processes."""
    lock = path.with_name(path.name + ".lock")
    with open(lock, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        if not (path / "meta" / "info.json").exists() and not (path / "done").exists():
            make(path)
    return path


@pytest.fixture(scope="session")
def tiny_dataset(shared_dir) -> Path:
    """3 Meta-World tasks x 3 expert episodes at 64x64 from corner3 (a LeRobot v3.0 dataset)."""
    from repwam.data.generate import GenerateConfig, generate

    def make(p):
        generate(p, GenerateConfig(tasks=TINY_TASKS, episodes_per_task=TINY_EPISODES, seed=0, workers=1))

    return _once(shared_dir / "tiny_mw", make)


@pytest.fixture(scope="session")
def tiny_tokenizer(shared_dir, tiny_dataset) -> Path:
    """A tokenizer checkpoint trained for a few steps on the tiny dataset, aligned to EfficientNet-Lite0."""
    from repwam.train.tokenizer import TokenizerTrainConfig, train_tokenizer
    from repwam.train.trainer import OptimConfig

    def make(p):
        cfg = TokenizerTrainConfig(
            teacher="efficientnet-lite0", teacher_layer="stage5", num_frames=9,
            clip_lengths=(5, 9), attn_window=2, val_fraction=0.34,
            optim=OptimConfig(steps=4, batch_size=4, save_every=2, log_every=1, image_every=2, warmup=1, val_items=8),
        )
        train_tokenizer(cfg, [tiny_dataset], p / "run", progress=False)
        (p / "done").touch()

    return _once(shared_dir / "tiny_tok", make) / "run" / "checkpoints" / "last"


@pytest.fixture(scope="session")
def tiny_lat(shared_dir, tiny_dataset, tiny_tokenizer) -> Path:
    """A LAT checkpoint trained for a few steps on the tiny tokenizer's latents."""
    from repwam.train.lat import LATTrainConfig, train_lat
    from repwam.train.trainer import OptimConfig

    def make(p):
        cfg = LATTrainConfig(tokenizer=str(tiny_tokenizer), val_fraction=0.34,
                             optim=OptimConfig(steps=30, batch_size=16, lr=3e-3, save_every=15, log_every=5, warmup=2,
                                               val_items=16))
        train_lat(cfg, [tiny_dataset], p / "run", progress=False)
        (p / "done").touch()

    return _once(shared_dir / "tiny_lat", make) / "run" / "checkpoints" / "last"


def video_only_copy(src_root: Path, dst: Path) -> Path:
    """The same episodes without any action or state column: action-free video."""
    from repwam.data.inspect import video_only

    return video_only(src_root, dst)



def torchrun(script: Path, args: list, root: Path, nproc: int = 2, timeout: int = 600) -> Path:
    """`python -m torch.distributed.run --standalone --nproc_per_node nproc script OUT *args` with one thread per
    rank; OUT is a new directory under root, returned. Each rank's stdout/stderr goes to its own file under OUT/logs,
    so a failure shows every rank's last lines (torchrun's own summary says only which rank died, and how).

    When the first failure is a rank killed by a signal (torchrun's "Root Cause" exit code negative: gloo's TCP
    transport aborting, seen once on CI as rank 0's SIGABRT with no traceback and rank 1 then reading "Connection
    reset by peer"), the run is repeated once in a fresh OUT, with a warning carrying the first attempt's logs. A
    rank that raised (exit code 1), or a second failure, fails the test."""
    import re
    import subprocess
    import sys
    import warnings

    def attempt(n: int):
        out = root / f"torchrun{n}"
        out.mkdir(parents=True)
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "--log-dir", str(out / "logs"), "--redirects", "3", str(script), str(out), *map(str, args)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_SHOW_CPP_STACKTRACES": "1"}
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        logs = [(f"{f.parent.name}/{f.name}", f.read_text(errors="replace"))
                for f in sorted((out / "logs").rglob("std*.log"))]
        report = "".join(f"--- rank {name} ---\n{text[-2500:]}\n" for name, text in logs if text.strip())
        report += f"--- torchrun ---\n{proc.stderr[-2000:]}"
        cause = re.search(r"Root Cause.*?exitcode\s*:\s*(-?\d+)", proc.stderr, re.S)
        return out, proc.returncode, bool(cause and int(cause.group(1)) < 0), report

    out, code, signalled, report = attempt(0)
    if code != 0 and signalled:
        warnings.warn(f"torchrun: a rank was killed by a signal; repeating once. The first attempt:\n{report}")
        out, code, _, report = attempt(1)
    assert code == 0, report
    return out
