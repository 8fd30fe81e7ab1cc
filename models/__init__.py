"""Torch/numpy models with no I/O: quantizers, diagnostics, recommenders, metrics."""

from __future__ import annotations

from typing import Any


def build_quantizer(method: str, levels: int, codebook_size: int, distances: list[str], seed: int = 0,
                    **params: Any):
    """Construct a quantizer by name: rqkmeans | rqvae | drq."""
    from models.drq import DRQ
    from models.rqkmeans import RQKMeans
    from models.rqvae import RQVAE

    classes = {"rqkmeans": RQKMeans, "rqvae": RQVAE, "drq": DRQ}
    if method not in classes:
        raise ValueError(f"unknown quantizer method '{method}': use one of {', '.join(classes)}")
    return classes[method](levels, codebook_size, distances, seed=seed, **params)
