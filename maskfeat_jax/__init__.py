"""MaskFeat (masked feature prediction) pretraining in JAX/Flax."""
