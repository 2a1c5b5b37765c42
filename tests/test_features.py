"""Pre-logit features of every registered model: the head applied to them gives the logits."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcls_jax import registry
from imgcls_jax.models import names
from imgcls_jax.models.features import prelogit_features

# The interception does not depend on depth: the deep variants shrunk to their first blocks.
SMALLER = {
    "ResNet": lambda m: dict(stage_sizes=(1,) * len(m.stage_sizes)),
    "EfficientNetLite": lambda m: dict(width_coefficient=0.25, depth_coefficient=0.3),
    "ViT": lambda m: dict(width=32, depth=1, mlp_dim=64, num_heads=2),
    "AirbenchNet": lambda m: {},
}


def _small_model(name: str) -> nn.Module:
    fields = {"width": 4, "patch_size": 8, "dtype": "float32"}
    model = registry.build_from("model", name, fields, num_classes=5)
    return model.clone(**SMALLER[type(model).__name__](model))


@pytest.mark.parametrize("name", names())
def test_features_through_the_head_give_the_logits(name):
    model = _small_model(name)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.standard_normal((3, 32, 32, 3)), jnp.float32)
    variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)
    # Perturbed: a zero-initialised head (the ViT's) would make every logit its bias.
    variables = jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32),
                             variables)  # fmt: skip
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    features = jax.jit(prelogit_features, static_argnums=0)(model, variables, images)
    head = variables["params"]["head"]
    assert features.shape == (3, head["kernel"].shape[0]) and features.dtype == jnp.float32
    np.testing.assert_allclose(features @ head["kernel"] + head["bias"], logits, rtol=1e-5,
                               atol=1e-5)  # fmt: skip


def test_a_model_without_a_head_says_what_to_name():
    class Headless(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return nn.Dense(3, name="classifier")(x)

    model = Headless()
    variables = model.init(jax.random.key(0), jnp.ones((2, 4)))
    with pytest.raises(ValueError, match="name its classifier layer 'head'"):
        prelogit_features(model, variables, jnp.ones((2, 4)))
