"""RQ-KMeans: residual k-means per level (k-means++ init), per-level distance, no learned encoder."""

from __future__ import annotations

import torch

from models.quantizer import Quantizer, residual_kmeans


class RQKMeans(Quantizer):
    method = "rqkmeans"

    def _fit(self, x: torch.Tensor) -> None:
        iters = int(self.params.get("kmeans_iters", 100))
        self.codebooks = residual_kmeans(x, self.levels, self.codebook_size, self.distances, iters, self.seed)
