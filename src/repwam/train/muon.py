"""Muon as torch.optim.Muon runs it, with its Newton–Schulz iterations in float32 off the GPU.

torch orthogonalises every update in bfloat16, which a GPU's matrix units make fast; a CPU without them emulates
bfloat16 matmuls, and at the `tiny` width that took about a third of an adaptation step on our 2-core machine
(`benchmarks/muon_speed.py`). Here the iterations run in float32 on the CPU (more precise, and about three times as
fast there) and in bfloat16 on CUDA, as torch does. Everything else is torch's Muon: its momentum and Nesterov
step, Newton–Schulz coefficients, learning-rate adjustment, decoupled weight decay and optimiser state (a run
resumes from either).
"""

from __future__ import annotations

import torch
from torch.optim._muon import _adjust_lr  # torch's learning-rate adjustment, as its Muon applies it


def orthogonalize(g: torch.Tensor, coefficients: tuple[float, float, float], steps: int, eps: float,
                  dtype: torch.dtype) -> torch.Tensor:
    """The quintic Newton–Schulz iteration of Keller Jordan's Muon, as torch.optim.Muon runs it, in `dtype`: about
    U S' V^T for g = U S V^T, with S' near 1 (0.5–1.5)."""
    a, b, c = coefficients
    tall = g.size(0) > g.size(1)
    x = g.to(dtype).T if tall else g.to(dtype)  # (short side, long side): the Gram matrix is the small one
    x = x / x.norm().clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class Muon(torch.optim.Muon):
    """torch.optim.Muon, orthogonalising in `ns_dtype` (None: bfloat16 on CUDA, float32 elsewhere)."""

    def __init__(self, params, *args, ns_dtype: torch.dtype | None = None, **kwargs):
        super().__init__(params, *args, **kwargs)
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, bufs = [], [], []
            self._init_group(group, params, grads, bufs)  # torch's: checks, and the momentum buffers it keeps
            lr, momentum = float(group["lr"]), group["momentum"]
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - momentum)
                update = g.lerp(buf, momentum) if group["nesterov"] else buf
                dtype = self.ns_dtype or (torch.bfloat16 if update.is_cuda else torch.float32)
                update = orthogonalize(update, group["ns_coefficients"], group["ns_steps"], group["eps"], dtype)
                p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss
