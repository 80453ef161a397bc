"""RELAX memory stays bounded as the number of masks grows."""

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from protojax.explain import relax

B, SIZE = 2, 16


def small_cnn_embedding(params, images):
    """Two 3×3 conv + ReLU layers and a global mean: `[B, 16, 16, 3]` → `[B, 16]`."""
    x = images
    for kernel in (params["conv1"], params["conv2"]):
        x = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        x = jax.nn.relu(x)
    return jnp.mean(x, axis=(1, 2))


def _compiled_relax(embed_fn, images, num_masks, batch_size):
    masks = jax.ShapeDtypeStruct((num_masks, SIZE, SIZE), jnp.float32)
    run = jax.jit(lambda m: relax(embed_fn, images, m, batch_size=batch_size))
    compiled = run.lower(masks).compile()
    return compiled, compiled.memory_analysis().temp_size_in_bytes


def test_relax_temp_memory_does_not_grow_with_the_number_of_masks():
    """Measured: the temp (scratch) bytes XLA allocates for the compiled RELAX executable on
    CPU, from `memory_analysis()`, which excludes the arguments (images, masks) and outputs.

    At batch_size 100 it is the same for 300 and 3,000 masks (within 1%), while evaluating
    all 3,000 masks at once needs many times more. The 3,000-mask run is then executed.
    """
    rng = np.random.default_rng(0)
    params = {
        "conv1": (rng.normal(size=(3, 3, 3, 8)) / 5).astype(np.float32),
        "conv2": (rng.normal(size=(3, 3, 8, 16)) / 8).astype(np.float32),
    }
    embed_fn = Partial(small_cnn_embedding, params)
    images = jnp.asarray(rng.normal(size=(B, SIZE, SIZE, 3)).astype(np.float32))

    _, small = _compiled_relax(embed_fn, images, 300, 100)
    run_large, large = _compiled_relax(embed_fn, images, 3000, 100)
    _, unchunked = _compiled_relax(embed_fn, images, 3000, None)
    assert abs(large - small) <= 0.01 * small, (small, large)
    assert unchunked > 10 * large, (large, unchunked)

    result = run_large(jnp.asarray(rng.random((3000, SIZE, SIZE)).astype(np.float32)))
    assert result.importance.shape == result.uncertainty.shape == (B, SIZE, SIZE)
    assert np.all(np.isfinite(result.importance)) and np.all(result.uncertainty >= 0)
