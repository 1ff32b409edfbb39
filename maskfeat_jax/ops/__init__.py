"""Backend-specific computations the models are built from, each with its reference form.

  attention.attend        softmax(q k^T) v with a hand-written backward
  activations.gelu        exact GELU through erf, hand-written backward
  linear.dot_general      x @ W for nnx.Linear; CPU backward from the saved input
  linear.patch_embed      patch convolution; patches + one matmul on the CPU
  pooling.depthwise_conv  depthwise Conv3d; shifted strided views on the CPU
  pooling.max_pool        max pool; shifted strided views on the CPU
  fusion.materialize      fusion fence on the CPU (and materialize_gradient)

Each op picks its form in one ``dispatch.select`` call; ``implementation('reference')`` (or
'tuned') forces one form while a function is traced, for tests.
"""

from maskfeat_jax.ops import activations, attention, fusion, linear, pooling
from maskfeat_jax.ops.dispatch import implementation

__all__ = ["activations", "attention", "fusion", "implementation", "linear", "pooling"]
