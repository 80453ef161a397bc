"""Post-hoc explainers: gradients, Grad-CAM, occlusion, RISE, RELAX, LRP and PRP.

Every explainer takes callables and arrays and is jit-compiled with its callables passed as
pytrees: give a `jax.tree_util.Partial(apply, params)` so that new parameters reuse the
compiled code. Gradient explainers return `[B, H, W, C]`; mask-based ones return `[B, H, W]`;
`reduce_channels` turns the first into the second.
"""

from protojax.explain.common import reduce_channels
from protojax.explain.gradcam import gradcam
from protojax.explain.gradients import integrated_gradients, saliency, smoothgrad
from protojax.explain.lrp import Composite, Rule, composite_by_name, lrp
from protojax.explain.occlusion import occlusion
from protojax.explain.prp import kmex_relevance, protopnet_relevance, protovae_relevance, prp
from protojax.explain.relax import RelaxResult, relax, relax_masks, u_relax
from protojax.explain.rise import rise, rise_masks

__all__ = [
    "Composite",
    "RelaxResult",
    "Rule",
    "composite_by_name",
    "gradcam",
    "integrated_gradients",
    "kmex_relevance",
    "lrp",
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
    "u_relax",
]
