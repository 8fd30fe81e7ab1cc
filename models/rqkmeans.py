"""RQ-KMeans: residual k-means per level (faiss, or the torch reference), per-level distance, no learned encoder."""

from __future__ import annotations

import torch

from semid.models.quantizer import Quantizer, residual_kmeans


class RQKMeans(Quantizer):
    method = "rqkmeans"

    def _fit(self, x: torch.Tensor) -> None:
        self.codebooks = residual_kmeans(x, self.levels, self.codebook_size, self.distances,
                                         self.params.kmeans_iters, self.seed, self.params.kmeans)
