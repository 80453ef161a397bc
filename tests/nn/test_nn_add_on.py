"""ProtoPNet's add-on layers: the output before the final sigmoid (where PRP starts)."""

import jax
import jax.numpy as jnp
import numpy as np

from protojax.nn.add_on import AddOnLayers


def test_pre_sigmoid_output_is_the_last_convs():
    net = AddOnLayers((16, 8))
    x = jax.random.normal(jax.random.key(0), (2, 3, 3, 32))
    variables = net.init(jax.random.key(1), x)
    out = net.apply(variables, x)
    pre = net.apply(variables, x, logits=True)
    assert pre.shape == out.shape == (2, 3, 3, 8)
    np.testing.assert_allclose(jax.nn.sigmoid(pre), out, rtol=1e-6)
    # The last conv by hand: a 1×1 conv is a matmul over channels.
    hidden = net.apply(variables, x, method=lambda m, v: v)  # the input, unchanged
    params = variables["params"]
    for index in range(3):
        conv = params[f"conv{index}"]
        hidden = jax.nn.relu(hidden @ conv["kernel"][0, 0] + conv["bias"])
    expected = hidden @ params["conv3"]["kernel"][0, 0] + params["conv3"]["bias"]
    np.testing.assert_allclose(pre, expected, rtol=1e-5, atol=1e-6)
    assert jnp.any(pre < 0)  # before the sigmoid: not squashed into (0, 1)
