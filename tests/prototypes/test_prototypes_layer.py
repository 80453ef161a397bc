"""The shared prototype layer: the official last-layer initialisation, classification against
float64 with inactive prototypes left out, `prototype_state`, masked updates, deactivation and
applying a projection."""

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes import layer
from protojax.prototypes.projection import ProjectionState

K, M = 3, 2


def test_last_layer_classifies_at_full_precision_without_inactive_prototypes():
    net = layer.LastLayer(K, M, incorrect=-0.25)
    rng = np.random.default_rng(0)
    sims = rng.uniform(0, 5, (4, K * M)).astype(np.float32)
    active = np.array([1, 1, 0, 1, 1, 0], bool)
    variables = net.init(jax.random.key(0), sims, active)
    kernel = np.asarray(variables["params"]["kernel"])
    expected = np.where(np.arange(K * M)[:, None] // M == np.arange(K), 1.0, -0.25)
    np.testing.assert_array_equal(kernel, expected)
    kernel = rng.normal(size=kernel.shape).astype(np.float32)
    logits = net.apply({"params": {"kernel": kernel}}, sims, active)
    reference = (sims.astype(np.float64) * active) @ kernel.astype(np.float64)
    np.testing.assert_allclose(logits, reference, rtol=1e-6, atol=1e-6)


def test_prototype_state_and_deactivation():
    state = layer.initial_prototype_state(K, M)
    assert set(state) == {"prototype_class", "active"}
    np.testing.assert_array_equal(state["prototype_class"], [0, 0, 1, 1, 2, 2])
    pushed = layer.initial_prototype_state(K, M, push=True)
    np.testing.assert_array_equal(pushed["source_index"], -1)
    np.testing.assert_array_equal(pushed["push_distance"], -1.0)
    assert pushed["source_location"].shape == (K * M, 2)
    variables = {"params": {"prototypes": jnp.ones((K * M, 4))}, "prototype_state": pushed}
    off = layer.with_active(variables, np.array([1, 0, 1, 1, 1, 1], bool))
    np.testing.assert_array_equal(off["prototype_state"]["active"], [1, 0, 1, 1, 1, 1])
    assert off["prototype_state"]["source_index"] is pushed["source_index"]
    grouped, active = layer.grouped(off, K)
    assert grouped.shape == (K, M, 4) and active.tolist() == [[1, 0], [1, 1], [1, 1]]
    assert set(layer.model_collections(variables)) == {"params"}


def test_mask_updates_zeroes_only_inactive_rows():
    updates = {
        "prototypes": jnp.ones((K * M, 4)),
        "last_layer": {"kernel": jnp.ones((K * M, K))},
        "encoder": {"w": jnp.ones((2, 2))},
    }
    active = np.array([1, 0, 1, 1, 0, 1], bool)
    masked = jax.tree.map(np.asarray, layer.mask_updates(updates, jnp.asarray(active)))
    for rows in (masked["prototypes"], masked["last_layer"]["kernel"]):
        assert not rows[~active].any() and rows[active].all()
    assert masked["encoder"]["w"].all()


def test_apply_projection_replaces_active_prototypes_with_a_patch():
    state = layer.initial_prototype_state(K, M, push=True)
    state["active"] = jnp.array([1, 1, 1, 0, 1, 1], bool)
    old = np.arange(K * M * 2, dtype=np.float32).reshape(K * M, 2)
    variables = {"params": {"prototypes": jnp.asarray(old)}, "prototype_state": state}
    projection = ProjectionState(
        distance=jnp.array([0.5, np.inf, 0.0, 1.0, 2.0, 3.0], jnp.float32),  # 1: no image
        index=jnp.arange(6, dtype=jnp.int32) + 10,
        location=jnp.ones((6, 2), jnp.int32),
        patch=-jnp.ones((6, 2)),
    )
    out = jax.tree.map(np.asarray, layer.apply_projection(variables, projection))
    replaced = np.array([1, 0, 1, 0, 1, 1], bool)  # active and found
    np.testing.assert_array_equal(out["params"]["prototypes"][replaced], -1.0)
    np.testing.assert_array_equal(out["params"]["prototypes"][~replaced], old[~replaced])
    expected_index = np.where(replaced, np.arange(6) + 10, -1)
    np.testing.assert_array_equal(out["prototype_state"]["source_index"], expected_index)
    np.testing.assert_array_equal(
        out["prototype_state"]["push_distance"], np.where(replaced, [0.5, 0, 0, 0, 2, 3], -1)
    )
