"""repwam.train.muon: torch.optim.Muon with its Newton–Schulz iterations in float32 off the GPU."""

from __future__ import annotations

import pytest
import torch
from torch.optim._muon import _zeropower_via_newtonschulz

from repwam.train.muon import Muon, orthogonalize

COEF = (3.4445, -4.7750, 2.0315)  # torch's (Keller Jordan's) quintic coefficients
SHAPES = [(8, 16), (16, 8), (12, 12), (6, 32)]  # wide, tall (transposed inside), square, the ℓ projection's shape


def test_orthogonalize_is_torchs_iteration_in_either_precision():
    g = torch.Generator().manual_seed(0)
    for shape in SHAPES:
        x = torch.randn(shape, generator=g)
        ref = _zeropower_via_newtonschulz(x, COEF, 5, 1e-7)  # torch's, in bfloat16
        assert torch.equal(orthogonalize(x, COEF, 5, 1e-7, torch.bfloat16), ref), shape
        y = orthogonalize(x, COEF, 5, 1e-7, torch.float32)
        assert y.dtype == torch.float32 and y.shape == x.shape
        assert (y - ref.float()).abs().max() < 0.05, shape  # the same map, to bfloat16's precision
        s = torch.linalg.svdvals(y)
        assert 0.5 < s.min() and s.max() < 1.5, shape  # about U S' V^T with S' near 1


@pytest.mark.parametrize("nesterov,adjust", [(True, "match_rms_adamw"), (False, None)])
def test_muon_steps_as_torchs_and_keeps_its_state(nesterov, adjust):
    """Orthogonalising in bfloat16 it is torch.optim.Muon step for step (weights and momentum); on the CPU by
    default it differs from it only by the iterations' precision; the optimiser state is torch's."""
    g = torch.Generator().manual_seed(1)
    init = [torch.randn(s, generator=g) for s in SHAPES]
    params = [[torch.nn.Parameter(w.clone()) for w in init] for _ in range(3)]
    kw = dict(lr=0.02, weight_decay=0.1, nesterov=nesterov, adjust_lr_fn=adjust)
    opts = [torch.optim.Muon(params[0], **kw), Muon(params[1], **kw, ns_dtype=torch.bfloat16), Muon(params[2], **kw)]
    for _ in range(3):
        grads = [torch.randn(s, generator=g) for s in SHAPES]
        for ps, opt in zip(params, opts):
            for p, grad in zip(ps, grads):
                p.grad = grad.clone()
            opt.step()
    for w, ref, ours, cpu in zip(init, *params):
        assert torch.equal(ref, ours)
        assert torch.equal(opts[0].state[ref]["momentum_buffer"], opts[1].state[ours]["momentum_buffer"])
        moved = (ref - w).abs().max()  # three steps of torch's Muon; float32 iterations land within 5% of it
        assert not torch.equal(ref, cpu) and (ref - cpu).abs().max() < 0.05 * moved
    opts[2].load_state_dict(opts[0].state_dict())  # resumes from torch's state, and torch's from ours
    opts[0].load_state_dict(opts[1].state_dict())
