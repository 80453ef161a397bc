"""Post-hoc explainers: gradients, Grad-CAM, occlusion, RISE, RELAX, LRP and PRP, which
`explain_all` runs together; and explanations through attributes (FLINT: local relevance,
activation maximisation).

Every explainer takes callables and arrays and is jit-compiled with its callables passed as
pytrees: give a `jax.tree_util.Partial(apply, params)` so that new parameters reuse the
compiled code. Gradient explainers return `[B, H, W, C]`; mask-based ones return `[B, H, W]`;
`reduce_channels` turns the first into the second.

Figures and the HTML report are in `protojax.explain.grid` and `protojax.explain.report`.
"""

from protojax.explain.attributes import local_relevance, maximize_attribute, top_activating
from protojax.explain.common import reduce_channels
from protojax.explain.gradcam import (
    LayerOutput,
    default_gradcam_layer,
    gradcam,
    layer_gradcam,
    layer_outputs,
)
from protojax.explain.gradients import integrated_gradients, saliency, smoothgrad
from protojax.explain.lrp import Composite, Rule, composite_by_name, input_bounds, lrp
from protojax.explain.occlusion import occlusion
from protojax.explain.prp import kmex_relevance, protopnet_relevance, protovae_relevance, prp
from protojax.explain.relax import RelaxResult, relax, relax_masks, u_relax
from protojax.explain.rise import rise, rise_masks
from protojax.explain.runner import EXPLAINERS, Explanations, explain_all

__all__ = [
    "EXPLAINERS",
    "Composite",
    "Explanations",
    "LayerOutput",
    "RelaxResult",
    "Rule",
    "composite_by_name",
    "default_gradcam_layer",
    "explain_all",
    "gradcam",
    "input_bounds",
    "integrated_gradients",
    "kmex_relevance",
    "layer_gradcam",
    "layer_outputs",
    "local_relevance",
    "lrp",
    "maximize_attribute",
    "occlusion",
    "protopnet_relevance",
    "protovae_relevance",
    "prp",
    "reduce_channels",
    "relax",
    "relax_masks",
    "rise",
    "rise_masks",
    "saliency",
    "smoothgrad",
    "top_activating",
    "u_relax",
]
