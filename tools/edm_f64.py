"""Shared by the golden generators that run EDM's networks in float64.

EDM's AttentionOp computes in float32 whatever the input dtype (to save memory in fp16 training).
Golden values are computed in float64, so patch_attention() makes it run the same arithmetic in the
input's dtype; in float32 that is EDM's computation unchanged.
"""
import numpy as np
import torch


class AttentionOpInDtype(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k):
        w = torch.einsum("ncq,nck->nqk", q, k / np.sqrt(k.shape[1])).softmax(dim=2)
        ctx.save_for_backward(q, k, w)
        return w

    @staticmethod
    def backward(ctx, dw):
        q, k, w = ctx.saved_tensors
        db = torch._softmax_backward_data(dw, w, 2, w.dtype)
        dq = torch.einsum("nck,nqk->ncq", k, db) / np.sqrt(k.shape[1])
        dk = torch.einsum("ncq,nqk->nck", q, db) / np.sqrt(k.shape[1])
        return dq, dk


def patch_attention(networks_module):
    """Replaces training.networks.AttentionOp (looked up at call time by UNetBlock.forward)."""
    networks_module.AttentionOp = AttentionOpInDtype
