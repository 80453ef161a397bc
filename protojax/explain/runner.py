"""Every explainer on one score, with bounded memory: `explain_all`.

Memory is bounded twice: images are explained `image_batch` at a time, and each explainer
evaluates at most `batch_size` perturbed images at once (its sample loop is chunked to
`batch_size // image_batch` samples), whatever the number of samples, steps, windows or masks.
RISE's and RELAX's masks are drawn once and shared by every image chunk; SmoothGrad draws its
noise per chunk, from the key folded with the chunk's first image index. LRP and PRP take one
modified backward pass per chunk.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.explain.common import check_images, reduce_channels
from protojax.explain.gradcam import default_gradcam_layer, layer_gradcam
from protojax.explain.gradients import integrated_gradients, saliency, smoothgrad
from protojax.explain.lrp import composite_by_name, lrp
from protojax.explain.occlusion import occlusion
from protojax.explain.relax import relax, relax_masks
from protojax.explain.rise import rise, rise_masks

EXPLAINERS = (
    "saliency",
    "smoothgrad",
    "integrated_gradients",
    "gradcam",
    "occlusion",
    "rise",
    "relax",
    "lrp",
    "prp",
)
# RELAX explains the embedding (no label); PRP a prototype's relevance score (`prp_fn`); the
# others explain a score.
EMBEDDING_EXPLAINERS = ("relax",)

# Each explainer's settings. Gradient attributions `[B, H, W, C]` are reduced over channels by
# `reduce`: the max |gradient| for saliency (Simonyan et al.), Σ|·| for SmoothGrad, the signed
# sum for integrated gradients (which keeps completeness). Occlusion's `patch` None is
# max(2, H // 8) pixels, its `stride` None half the patch. Grad-CAM's `layer` None is
# `default_gradcam_layer`. RELAX's 3,000 masks are the official default. LRP and PRP maps are
# the signed relevance summed over channels (which keeps conservation); LRP's default composite
# needs no input bounds (z⁺ for convolutions, ε for Dense layers, flat first layer); PRP's
# `composite` is a name for `composite_by_name`, by default the official one (`prp`), whose
# first layer is z^β bounded by `low` and `high`, the model input's range (floats, or tuples
# of one per channel).
DEFAULTS: dict[str, dict[str, Any]] = {
    "saliency": {"reduce": "max_abs"},
    "smoothgrad": {"num_samples": 50, "sigma": 0.15, "reduce": "abs_sum"},
    "integrated_gradients": {"steps": 50, "method": "trapezoid", "baseline": 0.0, "reduce": "sum"},
    "gradcam": {"layer": None},
    "occlusion": {"patch": None, "stride": None, "fill": 0.0},
    "rise": {"num_masks": 2000, "grid": 7, "p_keep": 0.5},
    "relax": {"num_masks": 3000, "grid": 7, "p_keep": 0.5},
    "lrp": {"composite": "epsilon_plus_flat", "reduce": "sum"},
    "prp": {"composite": "prp", "low": -1.0, "high": 1.0, "reduce": "sum"},
}


class Explanations(NamedTuple):
    """What `explain_all` returns.

    Attributes:
      maps: `{explainer: [B, H, W]}` float32 NumPy maps, in the order asked for.
      uncertainty: RELAX's uncertainty `[B, H, W]`, or None without RELAX.
      nonfinite: `{explainer: number of NaN or ±inf values}`, only for maps that hold any
        (a score that is NaN for some perturbed images, say); the maps are returned as they are.
      seconds: `{explainer: wall-clock seconds}`, compilation included.
      settings: `{explainer: the settings used}`, defaults filled in.
    """

    maps: dict[str, np.ndarray]
    uncertainty: np.ndarray | None
    nonfinite: dict[str, int]
    seconds: dict[str, float]
    settings: dict[str, dict[str, Any]]


def explainer_settings(
    explainers: Sequence[str],
    image_size: tuple[int, int],
    options: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Each explainer's settings: `DEFAULTS` updated by `options`, sizes resolved.

    Raises:
      ValueError: an unknown explainer or option.
    """
    options = dict(options or {})
    unknown = [name for name in [*explainers, *options] if name not in DEFAULTS]
    if unknown:
        raise ValueError(
            f"Unknown explainer {unknown[0]!r}; use names among {', '.join(EXPLAINERS)}."
        )
    settings = {}
    for name in explainers:
        given = dict(options.get(name, {}))
        bad = sorted(set(given) - set(DEFAULTS[name]))
        if bad:
            raise ValueError(
                f"Unknown option {bad[0]!r} for {name}; its options are "
                f"{', '.join(DEFAULTS[name])}."
            )
        settings[name] = {**DEFAULTS[name], **given}
    if "prp" in settings:
        composite_by_name(settings["prp"]["composite"])  # an unknown name stops here
    if "occlusion" in settings:
        occ = settings["occlusion"]
        occ["patch"] = occ["patch"] or max(2, min(image_size) // 8)
        occ["stride"] = occ["stride"] or max(1, occ["patch"] // 2)
    return settings


def explain_all(
    score_fn: Callable[..., jax.Array] | None,
    images: jax.Array,
    *,
    rng: jax.Array,
    targets: jax.Array | None = None,
    embed_fn: Callable[[jax.Array], jax.Array] | None = None,
    prp_fn: Callable[..., jax.Array] | None = None,
    prp_targets: jax.Array | None = None,
    explainers: Sequence[str] | None = None,
    options: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 256,
    image_batch: int = 8,
) -> Explanations:
    """Runs each explainer on the same images and score.

    Args:
      score_fn: `score_fn(images [B, H, W, C], targets [B]) -> [B]` (or `score_fn(images)`
        without `targets`), for example a method's `targets()["class_logit"]`; may be None when
        only RELAX runs.
      images: `[B, H, W, C]`, as the model takes them.
      rng: a PRNG key (SmoothGrad's noise, RISE's and RELAX's masks).
      targets: optional `[B]` class or prototype indices passed to `score_fn`.
      embed_fn: `embed_fn(images) -> [B, D]` for RELAX, for example `targets()["embedding"]`.
      prp_fn: `prp_fn(images, prototypes [B]) -> [B]` for PRP, a method's `targets()["prp"]`
        (see `protojax.explain.prp.prp_score`).
      prp_targets: `[B]` the prototype PRP explains for each image.
      explainers: names among `EXPLAINERS`, in the order the maps are wanted; None: every
        explainer whose inputs are given (RELAX with `embed_fn`, PRP with `prp_fn`).
      options: `{explainer: {option: value}}` overriding `DEFAULTS`.
      batch_size: perturbed images evaluated at once, all images of a chunk together.
      image_batch: images explained at once.

    Returns:
      `Explanations`, with `[B, H, W]` maps whatever the explainer's native output.
    """
    images = check_images(images)
    b, h, w, _ = images.shape
    if explainers is None:
        given = {"relax": embed_fn is not None, "prp": prp_fn is not None}
        explainers = [name for name in EXPLAINERS if given.get(name, True)]
    explainers = list(explainers)
    settings = explainer_settings(explainers, (h, w), options)
    if score_fn is None and any(e not in (*EMBEDDING_EXPLAINERS, "prp") for e in explainers):
        raise ValueError("score_fn is None; only RELAX and PRP run without a score.")
    if "prp" in explainers and (prp_fn is None or prp_targets is None):
        raise ValueError("PRP explains a prototype: pass prp_fn and prp_targets [B].")
    if "relax" in explainers and embed_fn is None:
        raise ValueError("RELAX explains an embedding: pass embed_fn (images -> [B, D]).")
    if batch_size < 1 or image_batch < 1:
        raise ValueError("batch_size and image_batch must be positive.")
    rng_noise, rng_rise, rng_relax = jax.random.split(rng, 3)
    if targets is not None:
        targets = jnp.asarray(targets)
    if prp_targets is not None:
        prp_targets = jnp.asarray(prp_targets)
    chunks = [slice(start, min(start + image_batch, b)) for start in range(0, b, image_batch)]
    masks = {}
    if "rise" in settings:
        s = settings["rise"]
        masks["rise"] = rise_masks(
            rng_rise, s["num_masks"], (h, w), grid=s["grid"], p_keep=s["p_keep"]
        )
    if "relax" in settings:
        s = settings["relax"]
        masks["relax"] = relax_masks(
            rng_relax, s["num_masks"], (h, w), grid=s["grid"], p_keep=s["p_keep"]
        )
    if "gradcam" in settings and settings["gradcam"]["layer"] is None:
        first = chunks[0]
        settings["gradcam"]["layer"] = default_gradcam_layer(
            score_fn, images[first], targets=None if targets is None else targets[first]
        )

    maps, seconds, uncertainty = {}, {}, None
    for name in explainers:
        start = time.perf_counter()
        parts, extra = [], []
        for chunk in chunks:
            x = images[chunk]
            t = None if targets is None else targets[chunk]
            samples = max(1, batch_size // x.shape[0])
            noise = jax.random.fold_in(rng_noise, chunk.start)
            if name == "prp":
                result = _prp(settings[name], prp_fn, x, prp_targets[chunk])
            else:
                result = _run_one(
                    name, settings[name], score_fn, embed_fn, x, t, samples, masks, noise
                )
            if name == "relax":
                result, chunk_uncertainty = result
                extra.append(np.asarray(chunk_uncertainty))
            parts.append(np.asarray(result, np.float32))
        maps[name] = np.concatenate(parts)
        if extra:
            uncertainty = np.concatenate(extra)
        seconds[name] = time.perf_counter() - start
    nonfinite = {
        name: int(np.sum(~np.isfinite(values)))
        for name, values in maps.items()
        if not np.all(np.isfinite(values))
    }
    return Explanations(maps, uncertainty, nonfinite, seconds, settings)


def _run_one(name, s, score_fn, embed_fn, images, targets, samples, masks, rng):
    """One explainer on one chunk of images: `[B, H, W]` (RELAX: importance, uncertainty)."""
    if name == "saliency":
        return reduce_channels(saliency(score_fn, images, targets=targets), s["reduce"])
    if name == "smoothgrad":
        grads = smoothgrad(
            score_fn, images, rng=rng, num_samples=s["num_samples"], sigma=s["sigma"],
            batch_size=samples, targets=targets,
        )  # fmt: skip
        return reduce_channels(grads, s["reduce"])
    if name == "integrated_gradients":
        attributions = integrated_gradients(
            score_fn, images, baseline=s["baseline"], steps=s["steps"], method=s["method"],
            batch_size=samples, targets=targets,
        )  # fmt: skip
        return reduce_channels(attributions, s["reduce"])
    if name == "gradcam":
        return layer_gradcam(score_fn, images, layer=s["layer"], targets=targets)
    if name == "occlusion":
        return occlusion(
            score_fn, images, patch=s["patch"], stride=s["stride"], fill=s["fill"],
            batch_size=samples, targets=targets,
        )  # fmt: skip
    if name == "rise":
        return rise(
            score_fn, images, masks["rise"], p_keep=s["p_keep"], batch_size=samples,
            targets=targets,
        )  # fmt: skip
    if name == "lrp":
        relevance = lrp(score_fn, images, targets=targets, composite=s["composite"])
        return reduce_channels(relevance, s["reduce"])
    result = relax(embed_fn, images, masks["relax"], batch_size=samples)
    return result.importance, result.uncertainty


def _prp(s, prp_fn, images, prototypes):
    """PRP of one chunk: LRP of the method's `prp` score with the settings' composite."""
    bounds = {key: tuple(v) if isinstance(v, list | tuple) else float(v)
              for key, v in (("low", s["low"]), ("high", s["high"]))}  # fmt: skip
    composite = composite_by_name(s["composite"], **bounds)
    return reduce_channels(
        lrp(prp_fn, images, targets=prototypes, composite=composite), s["reduce"]
    )
