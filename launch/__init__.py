"""Running MaskFeat pretraining on Cloud TPU VMs: ``python -m launch.tpu ACTION`` (see README)."""
