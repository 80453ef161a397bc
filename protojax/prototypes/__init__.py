"""Shared prototype kernels: distances and similarities, the prototype layer, projection
(push), the part-prototype costs and push schedule, k-means, diversity terms and measures,
channels.

Submodules: `distances`, `layer`, `projection`, `costs`, `schedule`, `kmeans`, `centroids`
(KMEx's class centroids), `diversity`, `channels`.
The distance, diversity and channel functions are also importable from the package itself.
k-means is not: the function `kmeans` shares its module's name, so `protojax.prototypes.kmeans`
is always the module, and the function is imported from it:

    from protojax.prototypes.kmeans import kmeans, kmeans_predict
    # or
    from protojax.prototypes import kmeans
    result = kmeans.kmeans(x, k, rng)
"""

from protojax.prototypes import (
    centroids,
    channels,
    costs,
    distances,
    diversity,
    kmeans,
    layer,
    projection,
    schedule,
)
from protojax.prototypes.channels import MxPoolResult, mx_pool, orthogonal_unmixing
from protojax.prototypes.distances import (
    l2_distances,
    log_similarity,
    min_over_patches,
    squared_l2_distances,
)
from protojax.prototypes.diversity import (
    PrototypeUsage,
    coverage,
    coverage_sample,
    davies_bouldin,
    inverse_volume_loss,
    orthonormality_loss,
    prototype_diversity_entropy,
    prototype_log_volume,
    prototype_usage,
)

__all__ = [
    "MxPoolResult",
    "PrototypeUsage",
    "centroids",
    "channels",
    "costs",
    "coverage",
    "coverage_sample",
    "davies_bouldin",
    "distances",
    "diversity",
    "inverse_volume_loss",
    "kmeans",
    "layer",
    "l2_distances",
    "log_similarity",
    "min_over_patches",
    "mx_pool",
    "orthogonal_unmixing",
    "orthonormality_loss",
    "projection",
    "schedule",
    "prototype_diversity_entropy",
    "prototype_log_volume",
    "prototype_usage",
    "squared_l2_distances",
]
