"""Torch/numpy library code with no pipeline I/O: quantizers, collisions, diagnostics, recommenders, rankers,
metrics and the training loop. Models are chosen by name through `semid.models.registry.get_model`."""
