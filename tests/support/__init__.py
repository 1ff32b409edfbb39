"""Helpers the tests share: small configs and batches, child-process runs of the commands,
random models, the messy-video zoo, the tiny ImageNet build and the multi-host worker."""
