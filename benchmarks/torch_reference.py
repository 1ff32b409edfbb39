"""Faithful PyTorch re-creation of the MaskFeat HOG target (HOGLayerC semantics).

Written from the specification, used as an independent reference for parity
tests and as the baseline in the HOG benchmark. NCHW layout, like the original:

  reflect pad 1 -> depthwise 3x3 Sobel (groups=C) -> mag = ||(gx, gy)||,
  bin = floor(atan2(gx, gy) / pi * nbins) % nbins -> magnitude vote
  (scatter_add) -> 8x8 cell sums (unfold) -> per-cell, per-channel L2
  normalization (F.normalize, eps 1e-12).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(window: int) -> torch.Tensor:
    """window x window kernel, sigma = window // 2, normalized to sum 1."""
    n = torch.arange(window, dtype=torch.float32)
    n = (n - n.mean()) / (window // 2)
    w = torch.exp(-0.5 * n**2)
    k = torch.outer(w, w)
    return k / k.sum()


class TorchHOG(torch.nn.Module):
    """HOG over [B, C, H, W] -> [B, C, nbins, H/pool, W/pool]."""

    def __init__(self, nbins: int = 9, pool: int = 8, gaussian_window: int = 0, channels: int = 3):
        super().__init__()
        self.nbins = nbins
        self.pool = pool
        self.gaussian_window = gaussian_window
        kx = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        kx = kx.view(1, 1, 3, 3).repeat(channels, 1, 1, 1)
        self.register_buffer("weight_x", kx)
        self.register_buffer("weight_y", kx.transpose(2, 3).contiguous())
        if gaussian_window:
            self.register_buffer("gkern", gaussian_kernel(gaussian_window))

    @torch.no_grad()
    def gradients(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sobel (gx, gy), each [B, C, H, W]: reflect pad 1, depthwise conv."""
        c = x.shape[1]
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        gx = F.conv2d(x, self.weight_x, bias=None, stride=1, padding=0, groups=c)
        gy = F.conv2d(x, self.weight_y, bias=None, stride=1, padding=0, groups=c)
        return gx, gy

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gx, gy = self.gradients(x)
        mag = torch.stack([gx, gy], dim=-1).norm(dim=-1)
        phase = torch.atan2(gx, gy) / math.pi * self.nbins

        b, c, h, w = mag.shape
        out = torch.zeros((b, c, self.nbins, h, w), dtype=torch.float32, device=x.device)
        phase = phase.view(b, c, 1, h, w)
        mag = mag.view(b, c, 1, h, w)
        if self.gaussian_window:
            win = self.gaussian_window
            if h % win or w % win:
                raise ValueError(f"H, W must be multiples of the window {win}")
            mag = mag * self.gkern.repeat(h // win, w // win)
        out.scatter_add_(2, phase.floor().long() % self.nbins, mag)

        out = out.unfold(3, self.pool, self.pool).unfold(4, self.pool, self.pool)
        out = out.sum(dim=[-1, -2])
        return F.normalize(out, p=2, dim=2)


def torch_hog_targets(
    x: torch.Tensor, patch_size: int = 16, nbins: int = 9, pool: int = 8
) -> torch.Tensor:
    """Per-token targets [B, (H/p)*(W/p), C*nbins*k*k] from NCHW input."""
    hog = TorchHOG(nbins=nbins, pool=pool, channels=x.shape[1])(x)
    k = patch_size // pool
    b = hog.shape[0]
    hog = hog.flatten(1, 2)  # [B, C*nbins, h, w]
    hog = hog.permute(0, 2, 3, 1)  # [B, h, w, C*nbins]
    hog = hog.unfold(1, k, k).unfold(2, k, k)  # [B, h/k, w/k, C*nbins, k, k]
    return hog.flatten(3).reshape(b, -1, hog.shape[3] * k * k)


# ---------------------------------------------------------------------------------------------
# torchvision's generic MViT class with MaskFeat's block settings (the MViTv2 reference).
# ---------------------------------------------------------------------------------------------


def torchvision_mvit(spec, *, seed: int = 0, dtype: torch.dtype = torch.float32):
    """``torchvision.models.video.mvit.MViT`` rebuilt from our spec, with random weights.

    LayerNorm parameters are perturbed away from (1, 0) so that a swapped scale/bias or a
    missing norm shows in a parity check."""
    from torchvision.models.video.mvit import MSBlockConfig, MViT

    from maskfeat_jax.interop import torch_names

    kwargs = torch_names.torchvision_mvit_kwargs(spec)
    kwargs["block_setting"] = [MSBlockConfig(**b) for b in kwargs["block_setting"]]
    torch.manual_seed(seed)
    model = MViT(**kwargs).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model.to(dtype)


def torchvision_mvit_tokens(
    model, clips: torch.Tensor, mask: torch.Tensor | None = None, mask_token=None
) -> torch.Tensor:
    """Last-block tokens [B, 1+N, C] of a torchvision MViT for clips [B, C, T, H, W], with
    MaskFeat's optional mask-token replacement of the patch embeddings (before cls)."""
    x = model.conv_proj(clips)
    thw = tuple(x.shape[2:])
    x = x.flatten(2).transpose(1, 2)
    if mask is not None:
        m = mask.reshape(mask.shape[0], -1, 1).to(x.dtype)
        x = x * (1 - m) + mask_token * m
    x = model.pos_encoding(x)
    for block in model.blocks:
        x, thw = block(x, thw)
    return x


def torchvision_mvit_mean_pool_logits(model, tokens: torch.Tensor) -> torch.Tensor:
    """MaskFeat's fine-tuning readout on torchvision's modules: mean over patch tokens (not
    cls) -> norm -> head."""
    return model.head(model.norm(tokens[:, 1:].mean(1)))


def jax_mvit_from_torchvision(model, spec, dtype, *, seed: int = 1):
    """Our MViT holding a torchvision MViT's weights (through the exporter's name mapping).

    Parameters torchvision has no place for (``mask_token``, ``pred_head``) get random
    values. Returns (model, torchvision keys that were not used)."""
    import jax
    import numpy as np
    from flax import nnx

    from maskfeat_jax.interop import torch_names
    from maskfeat_jax.models import mvit

    ours = nnx.eval_shape(lambda: mvit.MViT(spec, dtype=dtype, rngs=nnx.Rngs(0)))
    template = torch_names.flat_params(ours)
    flat, unused = torch_names.from_torch(
        model.state_dict(), template, torch_names.TORCHVISION_MVIT
    )
    rng = np.random.default_rng(seed)
    for key, value in flat.items():
        if isinstance(value, jax.ShapeDtypeStruct):  # no torchvision counterpart
            flat[key] = rng.normal(0.0, 0.1, value.shape) + key.endswith("scale")
    torch_names.load_flat_params(ours, flat, dtype=dtype)
    return ours, unused
