"""The score functions built from logits against NumPy."""

import jax.numpy as jnp
import numpy as np

from protojax.explain.targets import class_logit, class_probability, pick


def test_pick_class_logit_and_probability_match_numpy():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4, 3)).astype(np.float32)
    targets = np.array([2, 0, 1, 2])
    np.testing.assert_array_equal(pick(jnp.asarray(logits), targets), logits[range(4), targets])
    apply = lambda variables, images: variables * images  # logits = 1 · logits
    got = class_logit(apply, 1.0, jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_array_equal(got, logits[range(4), targets])
    softmax = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    got = class_probability(apply, 1.0, jnp.asarray(logits), jnp.asarray(targets))
    np.testing.assert_allclose(got, softmax[range(4), targets], rtol=1e-6)
