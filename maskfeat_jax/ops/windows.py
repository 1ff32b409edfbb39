"""Strided window views of a padded grid, and their transpose: the pieces the CPU forms of
the patch embedding and the pooling ops are built from (plain slices and pads, which XLA's
CPU backend fuses into a few loops)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def strided_windows(padded: jax.Array, kernel: Sequence[int], stride: Sequence[int], out):
    """For each kernel offset: the strided view [N, *out, C] of an already padded
    [N, *spatial, C] array that the window element at that offset sees."""
    n, c = padded.shape[0], padded.shape[-1]
    for offset in np.ndindex(*kernel):
        end = [o + (m - 1) * s + 1 for o, m, s in zip(offset, out, stride)]
        yield offset, jax.lax.slice(padded, (0, *offset, 0), (n, *end, c), (1, *stride, 1))


def spread(terms, size, stride):
    """The transpose of ``strided_windows`` (3-D grids): sums each (offset, [N, *out, C])
    term onto a [N, *size, C] grid at positions offset + m * stride. Polyphase: offset o
    lands on the phase sub-grid o % stride, shifted by o // stride, so every term is a plain
    shift (no interior padding, no work on the zeros between strided positions); the phases
    are then interleaved."""
    n, c = terms[0][1].shape[0], terms[0][1].shape[-1]
    out = terms[0][1].shape[1:4]
    phase_size = [-(-m // s) for m, s in zip(size, stride)]
    phases = {}
    for offset, term in terms:
        phase = tuple(o % s for o, s in zip(offset, stride))
        shift = [o // s for o, s in zip(offset, stride)]
        placed = jnp.pad(
            term, [(0, 0)] + [(a, p - m - a) for a, p, m in zip(shift, phase_size, out)] + [(0, 0)]
        )
        phases[phase] = placed + phases[phase] if phase in phases else placed
    zeros = jnp.zeros((n, *phase_size, c), terms[0][1].dtype)
    grid = jnp.stack([phases.get(p, zeros) for p in np.ndindex(*stride)])
    grid = grid.reshape(*stride, n, *phase_size, c).transpose(3, 4, 0, 5, 1, 6, 2, 7)
    grid = grid.reshape(n, *(p * s for p, s in zip(phase_size, stride)), c)
    return grid[:, : size[0], : size[1], : size[2]]
