"""Metrics for SEMs and explainers: accuracy, localisation, faithfulness, robustness, diversity,
and an interpreter's fidelity and conciseness (FLINT).

Every metric returns `MetricResult(per_example, aggregate)`, or a NamedTuple that begins with
those two fields (`CurveResult` of the deletion and insertion curves, which adds the curves).
Metrics are model-agnostic: they take arrays and callables (`score_fn`, `explain_fn`). All but
`max_box_accuracy` (connected components on the host) are jit-compiled internally and can be
called under `jax.jit`.
"""

from protojax.metrics.accuracy import accuracy
from protojax.metrics.box_accuracy import MaxBoxAccuracy, max_box_accuracy
from protojax.metrics.common import MetricResult
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
from protojax.metrics.robustness import max_sensitivity
from protojax.prototypes.diversity import prototype_diversity_entropy

__all__ = [
    "CONCISENESS_THRESHOLDS",
    "CurveResult",
    "GlobalRelevance",
    "MaxBoxAccuracy",
    "MetricResult",
    "accuracy",
    "conciseness",
    "deletion_curve",
    "fidelity",
    "fidelity_top_k",
    "global_relevance",
    "insertion_curve",
    "max_box_accuracy",
    "max_sensitivity",
    "perturbation_curve",
    "pointing_game",
    "prototype_diversity_entropy",
    "relevance_mass_accuracy",
    "relevance_rank_accuracy",
]
