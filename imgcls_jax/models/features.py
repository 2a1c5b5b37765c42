"""Pre-logit features of any registered model: the input of its classifier layer, for linear
probes (imgcls_jax.evaluation.few_shot) and feature extraction, without changing the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# Every model family ends in `nn.Dense(num_classes, name="head")`, a direct child of the model.
HEAD = "head"


def prelogit_features(
    model: nn.Module, variables: Mapping[str, Any], images: jax.Array
) -> jax.Array:
    """The input of `model`'s top-level "head" layer, [N, D] float32, for `images` [N, H, W, C]
    in evaluation mode (train=False). The head is skipped, not edited: a method interceptor
    returns its input in place of its output, so the model's own tail (the cast to float32)
    still applies. Jittable, with `model` static (a hashable module: tuples, not lists)."""
    seen = []

    def skip_head(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path == (HEAD,):
            seen.append(context.module)
            return args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(skip_head):
        features = model.apply(variables, images, train=False)
    if not seen:
        raise ValueError(f"{type(model).__name__} has no top-level layer named {HEAD!r}: name its "
                         f"classifier layer {HEAD!r} (as every model in imgcls_jax.models does) "
                         "to read its pre-logit features.")  # fmt: skip
    return jnp.asarray(features, jnp.float32)
