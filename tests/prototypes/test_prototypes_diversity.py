"""Diversity terms against float64 NumPy on well-conditioned, nearly singular and huge
prototype matrices; Davies–Bouldin against scikit-learn; convex hulls against SciPy; usage
and the coverage sample against direct loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.spatial import ConvexHull
from sklearn.metrics import davies_bouldin_score

from protojax.prototypes import diversity

orthonormality = jax.jit(diversity.orthonormality_loss)
inverse_volume = jax.jit(diversity.inverse_volume_loss, static_argnames=("scale", "jitter"))
volume_value_and_grad = jax.jit(jax.value_and_grad(diversity.inverse_volume_loss))
log_volume = jax.jit(diversity.prototype_log_volume)
davies_bouldin = jax.jit(diversity.davies_bouldin)


def float64_log_det(p, jitter, active=None):
    """log det(P_k P_kᵀ + jitter · mean diag · I) per class, over the active rows, float64."""
    out = []
    for k, block in enumerate(np.asarray(p, np.float64)):
        if active is not None:
            block = block[np.asarray(active[k], bool)]
        gram = block @ block.T
        gram = gram + jitter * np.mean(np.diag(gram)) * np.eye(len(block))
        sign, value = np.linalg.slogdet(gram)
        out.append(value if sign > 0 else -np.inf)
    return np.array(out)


def float64_inverse_volume(p, scale=1.0, jitter=1e-6, active=None):
    m = p.shape[1] if active is None else np.asarray(active).sum(1)
    return float(np.mean(np.exp(-0.5 * (float64_log_det(p, jitter, active) + m * np.log(scale)))))


def float64_orthonormality(p, active=None, form="prototypes"):
    losses = []
    for k, block in enumerate(np.asarray(p, np.float64)):
        if active is not None:
            block = block[np.asarray(active[k], bool)]
        centred = block - block.mean(0)
        if form == "prototypes":
            losses.append(np.linalg.norm(centred @ centred.T - np.eye(len(block))))
        else:
            losses.append(np.linalg.norm(centred.T @ centred - np.eye(block.shape[1])))
    return float(np.mean(losses))


@pytest.fixture(scope="module")
def prototype_sets():
    rng = np.random.default_rng(0)
    well = rng.standard_normal((3, 5, 16)).astype(np.float32)
    # Nearly identical prototypes: each class is one vector plus 1e-3 noise.
    near = (rng.standard_normal((3, 1, 16)) + 1e-3 * rng.standard_normal((3, 5, 16))).astype(
        np.float32
    )
    huge = (1e3 * rng.standard_normal((2, 5, 16))).astype(np.float32)
    return {"well-conditioned": well, "nearly singular": near, "huge": huge}


@pytest.mark.parametrize("name", ["well-conditioned", "nearly singular", "huge"])
def test_diversity_terms_match_float64(prototype_sets, name):
    p = prototype_sets[name]
    np.testing.assert_allclose(
        inverse_volume(p, scale=0.5), float64_inverse_volume(p, scale=0.5), rtol=1e-3
    )
    np.testing.assert_allclose(
        log_volume(p), np.mean(0.5 * float64_log_det(p, 0.0)), rtol=1e-3, atol=1e-3
    )
    np.testing.assert_allclose(orthonormality(p), float64_orthonormality(p), rtol=1e-4)


def test_inverse_volume_gradient_matches_float64(prototype_sets):
    # d/dP exp(−½ ℓ), ℓ = log det(A), A = PPᵀ + λI, λ = j · mean diag(PPᵀ):
    # ∂ℓ/∂P = 2 A⁻¹ P + tr(A⁻¹) · j · (2 / M) · P.
    jitter = 1e-6
    for name in ["well-conditioned", "nearly singular"]:
        p = prototype_sets[name][:1]
        p64 = p[0].astype(np.float64)
        m = len(p64)
        a = p64 @ p64.T
        a = a + jitter * np.mean(np.diag(a)) * np.eye(m)
        inv = np.linalg.inv(a)
        value = np.exp(-0.5 * np.linalg.slogdet(a)[1])
        dl = 2 * inv @ p64 + np.trace(inv) * jitter * (2 / m) * p64
        want = -0.5 * value * dl
        _, got = volume_value_and_grad(jnp.asarray(p))
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got[0], want, rtol=2e-3, atol=1e-3 * np.abs(want).max())


def test_inverse_volume_is_finite_where_a_raw_determinant_overflows_or_vanishes():
    rng = np.random.default_rng(1)
    # M = 20, d = 512 randn: det(G) ≈ 512²⁰ ≈ 1e54 overflows float32; the loss is ≈ 1e-27.
    big = rng.standard_normal((2, 20, 512)).astype(np.float32)
    value, grad = volume_value_and_grad(jnp.asarray(big))
    np.testing.assert_allclose(value, float64_inverse_volume(big), rtol=1e-3)
    assert np.all(np.isfinite(grad))
    # Twenty identical prototypes per class: det(G) = 0; the relative jitter keeps value and
    # gradient finite.
    same = np.repeat(rng.standard_normal((2, 1, 512)), 20, axis=1).astype(np.float32)
    value, grad = volume_value_and_grad(jnp.asarray(same))
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    np.testing.assert_allclose(value, float64_inverse_volume(same), rtol=1e-3)


def test_active_mask_restricts_every_term_to_the_active_prototypes(prototype_sets):
    p = prototype_sets["well-conditioned"]
    active = np.ones((3, 5), bool)
    active[0, [1, 3]] = False
    active[2, 4] = False
    np.testing.assert_allclose(
        inverse_volume(p, active=active, scale=0.5),
        float64_inverse_volume(p, scale=0.5, active=active),
        rtol=1e-3,
    )
    np.testing.assert_allclose(
        log_volume(p, active=active), np.mean(0.5 * float64_log_det(p, 0.0, active)), rtol=1e-3
    )
    np.testing.assert_allclose(
        orthonormality(p, active=active), float64_orthonormality(p, active), rtol=1e-4
    )
    # A class with no active prototype leaves the mean over classes.
    none_in_class_1 = active.copy()
    none_in_class_1[1] = False
    np.testing.assert_allclose(
        orthonormality(p, active=none_in_class_1),
        float64_orthonormality(p[[0, 2]], active[[0, 2]]),
        rtol=1e-4,
    )
    # Gradients stay finite, and are 0 for inactive prototypes, also for the empty class.
    for loss in (diversity.orthonormality_loss, diversity.inverse_volume_loss):
        grad = jax.jit(jax.grad(loss))(p, active=none_in_class_1)
        assert np.all(np.isfinite(grad))
        np.testing.assert_array_equal(np.asarray(grad)[~none_in_class_1], 0.0)


def test_orthonormality_hand_case_is_offset_invariant():
    # Two prototypes 2 apart: centred they are ±v with ‖v‖² = a = 1, so P̃P̃ᵀ − I is
    # [[a − 1, −a], [−a, a − 1]] and its Frobenius norm is √(2(a − 1)² + 2a²) = √2.
    p = np.zeros((1, 2, 3), np.float32)
    p[0, 0, 0], p[0, 1, 0] = 3.0, 1.0
    loss, grad = jax.jit(jax.value_and_grad(diversity.orthonormality_loss))(p + 100.0)
    np.testing.assert_allclose(loss, np.sqrt(2.0), rtol=1e-6)
    # With f = 2(a − 1)² + 2a²: ∂L/∂p₀ = f′(a) / (2√f) · 2v · ½ = 4 / (2√2) · v = √2 · v.
    np.testing.assert_allclose(grad[0, 0], [np.sqrt(2.0), 0.0, 0.0], rtol=1e-5)
    np.testing.assert_allclose(grad[0, 1], [-np.sqrt(2.0), 0.0, 0.0], rtol=1e-5)


def test_volume_terms_reject_more_prototypes_than_dimensions():
    with pytest.raises(ValueError, match="at most d = 4 dimensions"):
        diversity.inverse_volume_loss(np.ones((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match="at most d"):
        diversity.prototype_log_volume(np.ones((2, 5, 4), np.float32))
    with pytest.raises(ValueError, match=r"\[K, M, d\]"):
        diversity.orthonormality_loss(np.ones((5, 4), np.float32))
    with pytest.raises(ValueError, match=r"active must be \[K, M\]"):
        diversity.orthonormality_loss(np.ones((2, 3, 4), np.float32), active=np.ones(6, bool))


def test_davies_bouldin_matches_sklearn_with_cluster_means_as_prototypes():
    rng = np.random.default_rng(2)
    centres = rng.standard_normal((6, 4)) * 4
    labels = np.repeat(np.arange(6), 20)
    latents = (centres[labels] + rng.standard_normal((120, 4))).astype(np.float32)
    means = np.stack([latents[labels == j].mean(0) for j in range(6)]).astype(np.float32)
    grouped = means.reshape(3, 2, 4)  # K = 3 classes, M = 2
    got = davies_bouldin(latents, labels, grouped)
    np.testing.assert_allclose(got, davies_bouldin_score(latents, labels), rtol=1e-4)
    assert np.isnan(davies_bouldin(latents, np.zeros(120, np.int32), grouped))
    # Flat prototypes work too, and a prototype without assigned latents drops out.
    extra = np.concatenate([means, [[50.0, 50.0, 50.0, 50.0]]]).astype(np.float32)
    np.testing.assert_allclose(davies_bouldin(latents, labels, extra), got, rtol=1e-5)
    # An inactive prototype drops out too: sklearn on the other five clusters.
    keep = labels != 5
    active = np.array([True] * 5 + [False, True])
    np.testing.assert_allclose(
        davies_bouldin(latents, labels, extra, active=active),
        davies_bouldin_score(latents[keep], labels[keep]),
        rtol=1e-4,
    )


def test_hull_area_and_coverage_against_scipy():
    rng = np.random.default_rng(3)
    points = rng.standard_normal((200, 2))
    sample = points[np.linalg.norm(points, axis=1) < 1.0]
    got = diversity.coverage(points, sample)
    np.testing.assert_allclose(got, ConvexHull(sample).volume / ConvexHull(points).volume)
    # Hand case: the unit square inside the 2 × 2 square, with interior and duplicate points.
    square = np.array([[0, 0], [2, 0], [2, 2], [0, 2], [1, 1], [2, 2]], np.float64)
    unit = np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0.5, 0.5]], np.float64)
    assert diversity.coverage(square, unit) == pytest.approx(0.25)
    assert diversity.coverage(square, unit[:2]) == 0.0  # fewer than three points
    assert diversity.coverage(square, [[0, 0], [1, 1], [2, 2]]) == 0.0  # collinear
    with pytest.raises(ValueError, match="span no area"):
        diversity.coverage([[0, 0], [1, 1], [2, 2]], [[0, 0]])
    with pytest.raises(ValueError, match=r"\[N, 2\]"):
        diversity.coverage(np.zeros((4, 3)), np.zeros((3, 2)))


def test_coverage_sample_is_the_half_nearest_to_the_class_prototypes():
    rng = np.random.default_rng(4)
    prototypes = rng.standard_normal((2, 3, 5)).astype(np.float32)
    active = np.array([[True, False, True], [True, True, True]])
    labels = rng.integers(0, 2, 41)
    latents = rng.standard_normal((41, 5)).astype(np.float32)
    got = np.asarray(jax.jit(diversity.coverage_sample)(latents, labels, prototypes, active=active))
    want = np.zeros(41, bool)
    for c in range(2):
        members = np.flatnonzero(labels == c)
        own = prototypes[c][active[c]].astype(np.float64)
        nearest = [np.min(np.linalg.norm(own - latents[i], axis=1)) for i in members]
        want[members] = np.asarray(nearest) <= np.median(nearest)
    np.testing.assert_array_equal(got, want)


def test_prototype_usage_counts_the_most_similar_active_prototype():
    rng = np.random.default_rng(5)
    similarities = rng.standard_normal((30, 6)).astype(np.float32)
    similarities[:, 2] -= 10.0  # never the most similar
    similarities[0, 4] = similarities[0].max() + 5.0  # most similar for sample 0, but inactive
    prototype_class = np.array([0, 0, 1, 1, 2, 2])
    active = np.array([True, True, True, True, False, True])
    usage = diversity.prototype_usage(similarities, prototype_class, active)
    counts = np.zeros(6, np.int64)
    for row in similarities:
        best = max((j for j in range(6) if active[j]), key=lambda j: row[j])
        counts[best] += 1
    np.testing.assert_array_equal(usage.counts, counts)
    unused = [j for j in range(6) if active[j] and counts[j] == 0]
    np.testing.assert_array_equal(usage.unused, unused)
    assert usage.fraction_used == pytest.approx((5 - len(unused)) / 5)
    np.testing.assert_array_equal(
        usage.unused_per_class, np.bincount(prototype_class[unused], minlength=3)
    )
    assert 2 in usage.unused and 4 not in usage.unused


def test_orthonormality_dimensions_form_matches_numpy(prototype_sets):
    """The d×d form of the paper-time official code, value and gradient, against float64."""
    p = prototype_sets["well-conditioned"]
    loss = jax.jit(diversity.orthonormality_loss, static_argnames="form")
    np.testing.assert_allclose(
        loss(p, form="dimensions"), float64_orthonormality(p, form="dimensions"), rtol=1e-5
    )
    active = np.ones((3, 5), bool)
    active[1, [0, 3]] = False
    np.testing.assert_allclose(
        loss(p, active=active, form="dimensions"),
        float64_orthonormality(p, active, form="dimensions"),
        rtol=1e-5,
    )
    # d(mean_k ‖C_kᵀC_k − I‖)/dP_k = 2 C_k R_k / (K ‖R_k‖), R_k = C_kᵀC_k − I: the centring's
    # Jacobian drops out, since the rows of C_k, and so those of C_k R_k, sum to zero.
    grad = jax.grad(lambda q: diversity.orthonormality_loss(q, form="dimensions"))(p)
    for k, block in enumerate(p.astype(np.float64)):
        centred = block - block.mean(0)
        residual = centred.T @ centred - np.eye(16)
        expected = 2 * centred @ residual / (3 * np.linalg.norm(residual))
        np.testing.assert_allclose(grad[k], expected, rtol=1e-4, atol=1e-6)
    # Its norm cannot fall below √(d − M + 1): the centred Gram has rank ≤ M − 1.
    assert float(loss(p, form="dimensions")) >= np.sqrt(16 - 5 + 1)
    with pytest.raises(ValueError, match="form"):
        diversity.orthonormality_loss(p, form="rows")
