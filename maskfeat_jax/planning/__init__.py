"""Planning a TPU pod run from any machine: the real train step compiled for a TPU topology.

``chips``: per-chip figures, topology names and the topology's devices (described by libtpu,
no TPU needed). ``hlo``: statistics read from compiled HLO text (collective bytes, HBM traffic
by source). ``flops``: model FLOPs of a step. ``roofline``: compiling the step on the
topology's mesh and the projected figures (``roofline.plan``). ``report``: the report text and
the knobs that make a config fit. The command is ``python -m maskfeat_jax.plan``
(``maskfeat_jax/commands/plan.py``).
"""
