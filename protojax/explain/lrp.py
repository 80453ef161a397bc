"""Layer-wise relevance propagation (LRP, Bach et al. 2015) for any Flax Linen model.

The model is not rewritten. While the score is traced, `flax.linen.intercept_methods` swaps
each call of a `nn.Dense`, `nn.Conv` or `nn.ConvTranspose` for the same linear map whose
backward pass (a `jax.custom_vjp`) carries out an LRP rule, and a `nn.BatchNorm` that reads
the output of such a layer is canonised into it (the fused layer gives the same forward pass).
The backward pass carries the "modified gradient" g with relevance R = x ⊙ g at every tensor x,
so every other operation keeps its ordinary gradient, which is already an LRP rule:

- ReLU passes relevance where it is active;
- average pooling, spatial means, reshapes, slicing and concatenation split relevance in
  proportion to their inputs (LRP-0), as do residual sums `a + b` (R_a = a ⊙ g, R_b = b ⊙ g);
- max pooling gives all relevance to the winner.

Relevance at the output is the score itself (the gradient seed is 1), and the explainer
returns the relevance at the input of the first rule layer, `[B, H, W, C]`, which must hold
the images' pixels (per-pixel preprocessing or a flattening in between keeps each pixel's
relevance in place).

The score function's contract (for methods exporting LRP targets): `score_fn(images) -> [B]`
or `score_fn(images, targets) -> [B]`, as for the other gradient explainers, computing the
score through `module.apply(variables, images, ...)` in inference mode (BatchNorm with
running averages), so that the layers are intercepted. Activations other than ReLU, and
normalisations other than BatchNorm (LayerNorm, GroupNorm), keep their ordinary gradient
between rule layers, which is not an LRP rule; end the score at a Dense/Conv output (a logit)
for the relevance to sum to it.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protojax.explain.common import as_pytree_callable, call_score, check_images, check_targets

RULE_KINDS = ("epsilon", "alpha_beta", "zbox", "flat")
BATCHNORM_RULES = ("pass", "gradient")
_FIRST_ONLY = ("zbox", "flat")
_CONV_TYPES = (nn.Conv, nn.ConvTranspose)


class Rule(NamedTuple):
    """One LRP rule for a Dense or Conv layer.

    - `epsilon`: R_i = x_i Σ_j w_ij R_j / (z_j + ε·sign z_j), with z = Wx + b (the bias
      absorbs its share unless `ignore_bias`).
    - `alpha_beta`: positive and negative contributions z⁺ = W⁺x⁺ + W⁻x⁻ (+ b⁺) and
      z⁻ = W⁻x⁺ + W⁺x⁻ (+ b⁻) are normalised apart, α z⁺-share − β z⁻-share, with α − β = 1;
      z⁺ is α = 1, β = 0.
    - `zbox` (z^β, first layer only): inputs bounded by [low, high],
      R_i = Σ_j (x_i w_ij − low_i w⁺_ij − high_i w⁻_ij) R_j / z_j with
      z = Wx − W⁺·low − W⁻·high (no bias).
    - `flat` (first layer only): relevance spread evenly over each output's receptive field.

    `epsilon` is the stabiliser ε of every rule's denominators (z + ε·sign z, sign 0 = +1).
    `low` and `high` are floats, or tuples of per-channel floats (the rule is hashable, since
    the explainers are compiled for it).
    """

    kind: str = "epsilon"
    epsilon: float = 1e-6
    alpha: float = 1.0
    beta: float = 0.0
    low: Any = -1.0
    high: Any = 1.0
    ignore_bias: bool = False


class Composite(NamedTuple):
    """Rules by layer type, as zennit's composites.

    `dense` applies to `nn.Dense`, `conv` to `nn.Conv` and `nn.ConvTranspose`, `first` (if
    given) to the first rule layer the score calls. `batchnorm` is the rule of a BatchNorm
    that cannot be canonised (one that does not read a Dense or Conv output directly, such
    as Conv → ReLU → BN): `"pass"` hands its output relevance to its input unchanged,
    `"gradient"` uses its ordinary gradient (the affine map's LRP-0, its shift absorbs).
    """

    dense: Rule
    conv: Rule
    first: Rule | None = None
    batchnorm: str = "pass"


def zplus(*, epsilon: float = 1e-6, ignore_bias: bool = False) -> Rule:
    """The z⁺ rule, α = 1, β = 0."""
    return Rule("alpha_beta", epsilon, 1.0, 0.0, ignore_bias=ignore_bias)


def composite_by_name(
    name: str, *, epsilon: float = 1e-6, low: Any = -1.0, high: Any = 1.0
) -> Composite:
    """A named composite; Dense layers get the ε-rule with `epsilon` in all of them.

    - `epsilon`: ε everywhere.
    - `epsilon_plus`: z⁺ for convolutions; `epsilon_plus_flat` adds the flat first layer,
      `epsilon_plus_box` the z^β first layer bounded by [low, high].
    - `epsilon_alpha2_beta1` (α = 2, β = 1 for convolutions) and `epsilon_alpha2_beta1_flat`.
    - `prp`: the rules of the official PRP code (ProtoVAE's `prp.py`, KMEx's
      `utils/prp.py`): z^β for the first layer and α = 1, β = 0 for the other convolutions,
      both ignoring the bias, and ε = `epsilon` for Dense layers with their bias.
    - `prp_zplus`: `prp` with z⁺ (ignoring the bias) for Dense layers as well. PRP places a
      positive relevance on every latent dimension, whatever its value; the ε-rule then
      divides it by pre-activations near zero, and ProtoVAE's two encoder Dense layers turn it
      into large patches of either sign. z⁺ keeps it positive, and the maps follow the
      strokes (`docs/fidelity.md`, PRP). It equals `prp` on encoders without Dense layers
      (ProtoPNet's, a CNN black box's under KMEx).
    """
    dense = Rule("epsilon", epsilon)
    box = Rule("zbox", 1e-6, low=low, high=high, ignore_bias=True)
    flat = Rule("flat", 1e-6)
    ab21 = Rule("alpha_beta", 1e-6, 2.0, 1.0)
    composites = {
        "epsilon": Composite(dense, dense),
        "epsilon_plus": Composite(dense, zplus()),
        "epsilon_plus_flat": Composite(dense, zplus(), flat),
        "epsilon_plus_box": Composite(dense, zplus(), box),
        "epsilon_alpha2_beta1": Composite(dense, ab21),
        "epsilon_alpha2_beta1_flat": Composite(dense, ab21, flat),
        "prp": Composite(dense, zplus(epsilon=1e-12, ignore_bias=True), box),
        "prp_zplus": Composite(
            zplus(epsilon=1e-12, ignore_bias=True), zplus(epsilon=1e-12, ignore_bias=True), box
        ),
    }
    if name not in composites:
        raise ValueError(f"Unknown LRP composite {name!r}; choose one of {sorted(composites)}.")
    return composites[name]


def input_bounds(
    normalize: Callable[[np.ndarray], Any] | None, channels: int
) -> dict[str, float | tuple[float, ...]]:
    """The range of a model's inputs for pixels in [0, 1]: the `low` and `high` of the z^β
    first-layer rule (`composite_by_name(name, **input_bounds(normalize, channels))`).

    Args:
      normalize: maps pixels `[B, H, W, C]` in [0, 1] to the model's inputs; None: the
        identity.
      channels: C.

    Returns:
      `{"low": ..., "high": ...}`, each one float where every channel maps alike, else a tuple
      of one float per channel.
    """
    if normalize is None:
        return {"low": 0.0, "high": 1.0}
    bounds = {}
    for name, value in (("low", 0.0), ("high", 1.0)):
        pixel = np.asarray(normalize(np.full((1, 1, 1, channels), value, np.float32))).ravel()
        same = np.allclose(pixel, pixel[0])
        bounds[name] = float(pixel[0]) if same else tuple(float(v) for v in pixel)
    return bounds


def _rule_from(rule: str | Rule, epsilon: float) -> Rule:
    if isinstance(rule, Rule):
        return rule
    named = {
        "epsilon": Rule("epsilon", epsilon),
        "zplus": zplus(),
        "alpha1_beta0": zplus(),
        "alpha2_beta1": Rule("alpha_beta", 1e-6, 2.0, 1.0),
    }
    if rule not in named:
        raise ValueError(f"Unknown LRP rule {rule!r}; choose one of {sorted(named)} or a Rule.")
    return named[rule]


def _check_rule(rule: Rule, where: str) -> None:
    if rule.kind not in RULE_KINDS:
        raise ValueError(
            f"Unknown rule kind {rule.kind!r} for {where}; choose one of {RULE_KINDS}."
        )
    if rule.kind in _FIRST_ONLY and where != "first":
        raise ValueError(
            f"The {rule.kind} rule sees the input's bounds, not its value, so it can only be "
            f"the first layer's rule; got it for {where}."
        )
    if rule.kind == "alpha_beta" and not np.isclose(rule.alpha - rule.beta, 1.0):
        raise ValueError(f"alpha − beta must be 1 to conserve relevance; got {rule}.")


def resolve_composite(
    rule: str | Rule = "epsilon", epsilon: float = 1e-6, composite: str | Composite | None = None
) -> Composite:
    """The composite `lrp` uses: `composite` (a name or a `Composite`), else `rule` (a name
    or a `Rule`) for every Dense and Conv layer."""
    if composite is None:
        one = _rule_from(rule, epsilon)
        composite = Composite(one, one)
    elif isinstance(composite, str):
        composite = composite_by_name(composite, epsilon=epsilon)
    elif not isinstance(composite, Composite):
        raise ValueError(f"composite must be a name or a Composite; got {type(composite)}.")
    _check_rule(composite.dense, "dense")
    _check_rule(composite.conv, "conv")
    if composite.first is not None:
        _check_rule(composite.first, "first")
    if composite.batchnorm not in BATCHNORM_RULES:
        raise ValueError(
            f"Unknown BatchNorm rule {composite.batchnorm!r}; choose one of {BATCHNORM_RULES}."
        )
    return composite


# --- the rules on one linear layer y = apply(params, x) ------------------------------------


def _stabilise(z: jax.Array, epsilon: float) -> jax.Array:
    return z + epsilon * jnp.where(z >= 0, 1.0, -1.0).astype(z.dtype)


def _map_params(params: dict, kernel_fn, bias_fn) -> dict:
    """Applies `kernel_fn` to every weight leaf and `bias_fn` to every leaf named `bias`."""
    return {
        name: bias_fn(value) if name == "bias" else kernel_fn(value)
        for name, value in params.items()
    }


def _zero(v):
    return jnp.zeros_like(v)


def _positive(params: dict, bias: bool) -> dict:
    return _map_params(
        params, lambda w: jnp.maximum(w, 0), (lambda b: jnp.maximum(b, 0)) if bias else _zero
    )


def _negative(params: dict, bias: bool) -> dict:
    return _map_params(
        params, lambda w: jnp.minimum(w, 0), (lambda b: jnp.minimum(b, 0)) if bias else _zero
    )


def _transpose(apply, params, x, s):
    """Wᵀs for the linear part of x ↦ apply(params, x) (the bias drops out)."""
    return jax.vjp(lambda v: apply(params, v), x)[1](s)[0]


def _epsilon_gradient(rule: Rule, apply, params, x, relevance):
    used = params if not rule.ignore_bias else _map_params(params, lambda w: w, _zero)
    s = relevance / _stabilise(apply(used, x), rule.epsilon)
    return _transpose(apply, params, x, s)


def _alpha_beta_gradient(rule: Rule, apply, params, x, relevance):
    bias = not rule.ignore_bias
    pos, neg = _positive(params, bias), _negative(params, bias)
    pos_nb, neg_nb = _positive(params, False), _negative(params, False)
    xp, xn = jnp.maximum(x, 0), jnp.minimum(x, 0)
    on, off = (x > 0).astype(x.dtype), (x < 0).astype(x.dtype)

    def share(w_for_pos_x, w_for_neg_x, w_for_neg_x_nb):
        z = apply(w_for_pos_x, xp) + apply(w_for_neg_x_nb, xn)
        s = relevance / _stabilise(z, rule.epsilon)
        return on * _transpose(apply, w_for_pos_x, x, s) + off * _transpose(
            apply, w_for_neg_x, x, s
        )

    g = rule.alpha * share(pos, neg, neg_nb)
    if rule.beta:
        g = g - rule.beta * share(neg, pos, pos_nb)
    return g


def _zbox_relevance(rule: Rule, apply, params, x, relevance):
    plain = _map_params(params, lambda w: w, _zero)
    pos, neg = _positive(params, False), _negative(params, False)
    low = jnp.broadcast_to(jnp.asarray(rule.low, x.dtype), x.shape)
    high = jnp.broadcast_to(jnp.asarray(rule.high, x.dtype), x.shape)
    z = apply(plain, x) - apply(pos, low) - apply(neg, high)
    s = relevance / _stabilise(z, rule.epsilon)
    return (
        x * _transpose(apply, plain, x, s)
        - low * _transpose(apply, pos, x, s)
        - high * _transpose(apply, neg, x, s)
    )


def _flat_relevance(rule: Rule, apply, params, x, relevance):
    ones = _map_params(params, jnp.ones_like, _zero)
    z = apply(ones, jnp.ones_like(x))
    return _transpose(apply, ones, x, relevance / _stabilise(z, rule.epsilon))


def _rule_gradient(rule: Rule, apply, params, x, relevance):
    """The modified gradient g at the input, with input relevance x ⊙ g."""
    if rule.kind == "epsilon":
        return _epsilon_gradient(rule, apply, params, x, relevance)
    return _alpha_beta_gradient(rule, apply, params, x, relevance)


def _rule_relevance(rule: Rule, apply, params, x, relevance):
    """The relevance at the input."""
    if rule.kind == "zbox":
        return _zbox_relevance(rule, apply, params, x, relevance)
    if rule.kind == "flat":
        return _flat_relevance(rule, apply, params, x, relevance)
    return x * _rule_gradient(rule, apply, params, x, relevance)


def _ruled_layer(rule: Rule, apply, apply_rule, first: bool):
    """y = apply(params, x) with the rule as its backward pass, computed by `apply_rule` (the
    same layer in float32 at the highest matmul precision: the rules divide by sums of
    contributions, which low-precision matmuls would perturb).

    A first layer sends its input relevance to `probe` (the explainer's output) and nothing
    further back; the others send the modified gradient to x.
    """

    @jax.custom_vjp
    def layer(params, x, probe):
        del probe
        return apply(params, x)

    def forward(params, x, probe):
        y = apply(params, x)
        return y, (params, x, probe, y)

    def backward(saved, g):
        params, x, probe, y = saved
        params32 = jax.tree_util.tree_map(lambda v: v.astype(jnp.float32), params)
        x32 = x.astype(jnp.float32)
        relevance = y.astype(jnp.float32) * g.astype(jnp.float32)
        zeros = jax.tree_util.tree_map(jnp.zeros_like, params)
        if first:
            r_in = _rule_relevance(rule, apply_rule, params32, x32, relevance)
            return zeros, jnp.zeros_like(x), r_in.reshape(probe.shape).astype(probe.dtype)
        g_in = _rule_gradient(rule, apply_rule, params32, x32, relevance)
        return zeros, g_in.astype(x.dtype), jnp.zeros_like(probe)

    layer.defvjp(forward, backward)
    return layer


def _pass_through(apply_fn):
    """A layer whose output relevance goes to its input unchanged: g_in = y ⊙ g / x."""

    @jax.custom_vjp
    def layer(x):
        return apply_fn(x)

    def forward(x):
        y = apply_fn(x)
        return y, (x, y)

    def backward(saved, g):
        x, y = saved
        safe = jnp.where(x == 0, 1.0, x)
        return (jnp.where(x == 0, 0.0, y * g / safe).astype(x.dtype),)

    layer.defvjp(forward, backward)
    return layer


# --- interception --------------------------------------------------------------------------


class _Last(NamedTuple):
    output: Any
    module: nn.Module
    params: dict
    x: Any
    first: bool


class _Interceptor:
    """Rewrites the backward pass of the layers one score calls (see the module docstring)."""

    def __init__(self, composite: Composite, probe: jax.Array):
        self.composite = composite
        self.probe = probe
        self.seen_first = False
        self.probe_used = False
        self.last: _Last | None = None
        self.bypass = False

    def _pure(self, module: nn.Module, **overrides):
        clone = module.clone(parent=None, **overrides)

        def apply(params, x):
            self.bypass = True
            try:
                return clone.apply({"params": params}, x)
            finally:
                self.bypass = False

        return apply

    def __call__(self, next_fun, args, kwargs, context):
        module = context.module
        if self.bypass or context.method_name != "__call__":
            return next_fun(*args, **kwargs)
        if isinstance(module, nn.BatchNorm):
            return self._batchnorm(next_fun, args, kwargs, module)
        if isinstance(module, nn.Dense | nn.Conv | nn.ConvTranspose):
            if len(args) != 1 or kwargs:
                return next_fun(*args, **kwargs)
            return self._linear(module, dict(module.variables["params"]), args[0])
        return next_fun(*args, **kwargs)

    def _rule(self, module: nn.Module, first: bool) -> Rule:
        if first and self.composite.first is not None:
            return self.composite.first
        return self.composite.conv if isinstance(module, _CONV_TYPES) else self.composite.dense

    def _run(self, module, params, x, first, **overrides):
        rule = self._rule(module, first)
        if first:
            if x.size != self.probe.size:
                raise ValueError(
                    f"LRP needs the first Dense/Conv layer to read the images (or a reshape of "
                    f"them): it got shape {x.shape}, the images have shape {self.probe.shape}."
                )
            self.probe_used = True
        exact = {"dtype": jnp.float32, "precision": jax.lax.Precision.HIGHEST}
        layer = _ruled_layer(
            rule, self._pure(module, **overrides), self._pure(module, **exact, **overrides), first
        )
        return layer(params, x, self.probe)

    def _linear(self, module, params, x):
        first = not self.seen_first
        self.seen_first = True
        y = self._run(module, params, x, first)
        self.last = _Last(y, module, params, x, first)
        return y

    def _batchnorm(self, next_fun, args, kwargs, module):
        x = args[0]
        use_running_average = kwargs.get("use_running_average", module.use_running_average)
        if len(args) > 1 and args[1] is not None:
            use_running_average = args[1]
        if not use_running_average:
            raise ValueError(
                "LRP explains a model in inference mode, but a BatchNorm was called with "
                "use_running_average=False; call the model with train=False."
            )
        if module.axis not in (-1, x.ndim - 1):
            raise ValueError(f"LRP canonises BatchNorm over the last axis only; got {module.axis}.")
        last = self.last
        if last is not None and x is last.output and _fusable(last.module, module, last.params):
            self.last = None
            return self._run(
                last.module,
                _fuse_batchnorm(last.params, module),
                last.x,
                last.first,
                use_bias=True,
            )
        if self.composite.batchnorm == "gradient":
            return next_fun(*args, **kwargs)
        return _pass_through(lambda v: next_fun(v, *args[1:], **kwargs))(x)


def _fusable(layer: nn.Module, bn: nn.BatchNorm, params: dict) -> bool:
    """Whether the layer's kernel ends in its output features, which BN scales."""
    if getattr(layer, "transpose_kernel", False):
        return False
    return params["kernel"].shape[-1] == bn.variables["batch_stats"]["mean"].shape[-1]


def _fuse_batchnorm(params: dict, bn: nn.BatchNorm) -> dict:
    """Kernel and bias of Dense/Conv → BN as one layer, BN(Wx + b) = (a·W)x + a(b − m) + β."""
    variables = bn.variables
    stats = variables["batch_stats"]
    bn_params = variables.get("params", {})
    kernel = params["kernel"]
    mean = stats["mean"].astype(jnp.float32)
    scale = jax.lax.rsqrt(stats["var"].astype(jnp.float32) + bn.epsilon)
    if "scale" in bn_params:
        scale = scale * bn_params["scale"]
    shift = bn_params.get("bias", jnp.zeros_like(mean))
    bias = params.get("bias", jnp.zeros_like(mean))
    return {
        "kernel": (kernel * scale).astype(kernel.dtype),
        "bias": ((bias - mean) * scale + shift).astype(kernel.dtype),
    }


# --- the explainers ------------------------------------------------------------------------


def input_relevance(forward, images, composite):
    """Input relevance of Σ forward(images), with forward traced under the interceptor."""
    probe = jnp.zeros_like(images)
    interceptor = _Interceptor(composite, probe)

    def objective(x, p):
        interceptor.probe = p
        with nn.intercept_methods(interceptor):
            return jnp.sum(forward(x))

    grad_x, grad_probe = jax.grad(objective, argnums=(0, 1))(images, probe)
    if interceptor.probe_used:
        return grad_probe
    return images * grad_x


def lrp(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    targets: jax.Array | None = None,
    rule: str | Rule = "epsilon",
    epsilon: float = 1e-6,
    composite: str | Composite | None = None,
) -> jax.Array:
    """LRP relevance of each image's score, `[B, H, W, C]`.

    Args:
      score_fn: `score_fn(images [B, H, W, C]) -> [B]`, or `score_fn(images, targets)`; it
        must run Flax Linen modules (`module.apply`) in inference mode, ideally as a
        `jax.tree_util.Partial` whose leaves are the variables (see the module docstring).
      images: `[B, H, W, C]`.
      targets: optional `[B]` class (or prototype) indices passed to `score_fn`.
      rule: the rule of every Dense and Conv layer when `composite` is None: `"epsilon"`,
        `"zplus"` (= `"alpha1_beta0"`), `"alpha2_beta1"`, or a `Rule`.
      epsilon: the ε of the ε-rule (and of the composites' Dense layers).
      composite: a `composite_by_name` name or a `Composite`; overrides `rule`.

    Returns:
      `[B, H, W, C]` relevance; with ε → 0, bias-free layers and LRP-0/ε or z⁺ rules, it sums
      to each image's score.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    return _lrp(score_fn, images, targets, resolve_composite(rule, epsilon, composite))


@partial(jax.jit, static_argnames=("composite",))
def _lrp(score_fn, images, targets, composite):
    return input_relevance(lambda x: call_score(score_fn, x, targets), images, composite)


def lrp_scores(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    targets: jax.Array | None = None,
    composite: str | Composite | None = None,
) -> jax.Array:
    """The scores `[B]` as `lrp` computes them, with BatchNorm canonised into the layers
    before it: equal to `score_fn`'s up to rounding (a check that canonisation kept the
    model)."""
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    return _lrp_scores(score_fn, images, targets, resolve_composite(composite=composite))


@partial(jax.jit, static_argnames=("composite",))
def _lrp_scores(score_fn, images, targets, composite):
    with nn.intercept_methods(_Interceptor(composite, jnp.zeros_like(images))):
        return call_score(score_fn, images, targets)
