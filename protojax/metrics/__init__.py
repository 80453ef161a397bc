"""Metrics for SEMs and explainers, by the three predicates: transparency (prototype usage,
duplicates, last-layer structure, source purity), trustworthiness (accuracy, deletion and
insertion, KMEx's AD/AI, prototype removal, max-sensitivity, parameter randomisation, spatial
misalignment), diversity (entropy, log-volume, pairwise distance, Davies–Bouldin, coverage);
localisation against masks and boxes; and an interpreter's fidelity and conciseness (FLINT).

Every metric returns `MetricResult(per_example, aggregate)`, or a NamedTuple that begins with
those two fields (`CurveResult` of the deletion and insertion curves, which adds the curves).
Metrics are model-agnostic: they take arrays and callables (`score_fn`, `explain_fn`). All but
`max_box_accuracy` (connected components on the host) are jit-compiled internally and can be
called under `jax.jit`.
"""

from protojax.metrics.accuracy import accuracy, top_k_accuracy
from protojax.metrics.box_accuracy import MaxBoxAccuracy, mask_boxes, max_box_accuracy
from protojax.metrics.common import MetricResult
from protojax.metrics.diversity import (
    Diversity,
    class_coverage,
    class_log_volumes,
    mean_pairwise_distance,
    prototype_diversity,
)
from protojax.metrics.drop_increase import DropIncrease, average_drop_increase
from protojax.metrics.faithfulness import (
    CurveResult,
    deletion_curve,
    insertion_curve,
    perturbation_curve,
)
from protojax.metrics.interpretation import (
    CONCISENESS_THRESHOLDS,
    GlobalRelevance,
    conciseness,
    fidelity,
    fidelity_top_k,
    global_relevance,
)
from protojax.metrics.localisation import (
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
)
from protojax.metrics.misalignment import Misalignment, spatial_misalignment
from protojax.metrics.randomisation import Randomisation, model_randomisation, spearman
from protojax.metrics.removal import RemovalEffect, prototype_removal
from protojax.metrics.robustness import max_sensitivity
from protojax.metrics.transparency import (
    class_usage,
    last_layer_structure,
    near_duplicates,
    nearest_labels,
    source_purity,
)
from protojax.prototypes.diversity import prototype_diversity_entropy

__all__ = [
    "CONCISENESS_THRESHOLDS",
    "CurveResult",
    "Diversity",
    "DropIncrease",
    "GlobalRelevance",
    "MaxBoxAccuracy",
    "MetricResult",
    "Misalignment",
    "Randomisation",
    "RemovalEffect",
    "accuracy",
    "average_drop_increase",
    "class_coverage",
    "class_log_volumes",
    "class_usage",
    "conciseness",
    "deletion_curve",
    "fidelity",
    "fidelity_top_k",
    "global_relevance",
    "insertion_curve",
    "last_layer_structure",
    "mask_boxes",
    "max_box_accuracy",
    "max_sensitivity",
    "mean_pairwise_distance",
    "model_randomisation",
    "near_duplicates",
    "nearest_labels",
    "perturbation_curve",
    "pointing_game",
    "prototype_diversity",
    "prototype_diversity_entropy",
    "prototype_removal",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
    "source_purity",
    "spatial_misalignment",
    "spearman",
    "top_k_accuracy",
]
