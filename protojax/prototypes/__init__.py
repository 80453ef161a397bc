"""Shared prototype kernels: distances and similarities, k-means, diversity terms, channels."""

from protojax.prototypes.distances import (
    l2_distances,
    log_similarity,
    min_over_patches,
    squared_l2_distances,
)

__all__ = ["l2_distances", "log_similarity", "min_over_patches", "squared_l2_distances"]
