"""PyTorch interoperability: parameter names and layouts (``torch_names``), export of our
weights to timm / SlowFast / torchvision state dicts (``export``) and import of theirs as a
checkpoint for ``config.init_from`` (``import_torch``). Depends only on the model, checkpoint
and error layers, never on training."""
