"""Small ViT and MViT specs and random inputs for both frameworks (NHWC for ours, NCHW for
torch)."""

import numpy as np
import pytest

from maskfeat_jax.models import mvit, vit

torch = pytest.importorskip("torch")


def vit_spec(**kw):
    base = dict(image_size=32, width=64, depth=2, num_heads=4, mlp_dim=128)
    return vit.make_spec("B/16", **{**base, **kw})


def mvit_spec(**kw):
    base = dict(embed_dim=16, num_heads=1, depth=4, stage_starts=(1, 2, 3))
    return mvit.make_spec("MViTv2-S", num_frames=8, image_size=64, **{**base, **kw})


def images(spec, seed=0):
    return np.random.default_rng(seed).normal(size=(2, spec.image_size, spec.image_size, 3))


def to_nchw(x, dtype):
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(dtype)


def clips(spec, seed=0):
    x = np.random.default_rng(seed).normal(size=(1, spec.num_frames, 64, 64, 3))
    return x, torch.from_numpy(np.ascontiguousarray(x.transpose(0, 4, 1, 2, 3)))
