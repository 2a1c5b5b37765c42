"""A ViT applied to images of another size than it was initialised for: its learned position
embeddings resampled to the new patch grid, its sine-cosine ones computed for it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcls_jax.models import vit


def _model(pool: str, posemb: str) -> vit.ViT:
    return vit.ViT(num_classes=5, width=32, depth=1, mlp_dim=64, num_heads=2, patch_size=4,
                   pool=pool, posemb=posemb)  # fmt: skip


def _images(height: int, width: int) -> jax.Array:
    return jnp.asarray(np.random.default_rng(0).standard_normal((2, height, width, 3)), jnp.float32)


def _init(model: vit.ViT, side: int) -> dict:
    variables = model.init(jax.random.key(0), _images(side, side))
    # Perturbed: the zero-initialised head and class token would hide what the blocks see.
    rng = np.random.default_rng(1)
    return jax.tree.map(lambda p: p + 0.1 * rng.standard_normal(p.shape, np.float32), variables)


def _position_table(model: vit.ViT, variables: dict, images: jax.Array) -> np.ndarray:
    """What the model adds to its tokens, [tokens, width]: the first block's input with the
    patch embedding and the class token zeroed (so the tokens are 0 + the table, exactly)."""
    params = jax.tree.map(np.asarray, variables["params"])
    params["stem_conv"] = jax.tree.map(np.zeros_like, params["stem_conv"])
    if "cls_token" in params:
        params["cls_token"] = np.zeros_like(params["cls_token"])
    seen = []

    def record(next_fun, args, kwargs, context):
        if context.method_name == "__call__" and context.module.path == ("block_0",):
            seen.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        model.apply({"params": params}, images)
    tokens = np.asarray(seen[0])
    np.testing.assert_array_equal(tokens[0], tokens[1])  # The same for every image.
    return tokens[0]


def _bilinear(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """[h, w, c] resized up to [height, width, c] by bilinear interpolation between pixel
    centres, edges clamped."""

    def weights(size_in: int, size_out: int) -> np.ndarray:
        source = np.clip((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, 0, size_in - 1)
        low = np.floor(source).astype(int)
        high, frac = np.minimum(low + 1, size_in - 1), source - low
        matrix = np.zeros((size_out, size_in))
        np.add.at(matrix, (np.arange(size_out), low), 1 - frac)
        np.add.at(matrix, (np.arange(size_out), high), frac)
        return matrix

    rows, cols = weights(grid.shape[0], height), weights(grid.shape[1], width)
    return np.einsum("ih,jw,hwc->ijc", rows, cols, grid)


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_at_the_stored_resolution_nothing_is_resampled(pool, monkeypatch):
    model = _model(pool, "learn")
    variables = _init(model, 32)
    before = model.apply(variables, _images(32, 32))

    def fail(*args):
        raise AssertionError("resampled at the stored resolution")

    monkeypatch.setattr(vit, "resample_posemb", fail)
    np.testing.assert_array_equal(model.apply(variables, _images(32, 32)), before)
    table = _position_table(model, variables, _images(32, 32))
    np.testing.assert_array_equal(table, variables["params"]["pos_embedding"][0])


@pytest.mark.parametrize("pool", ["cls", "gap"])
@pytest.mark.parametrize("height, width", [(48, 48), (48, 32)])
def test_learned_table_is_resampled_bilinearly_to_another_grid(pool, height, width):
    """Initialised at 32 px (8x8 patches of 4 px), applied at 48 px (12x12) and 48x32 (12x8)."""
    model = _model(pool, "learn")
    variables = _init(model, 32)
    stored = np.asarray(variables["params"]["pos_embedding"][0])
    prefix = 1 if pool == "cls" else 0
    grid = (height // 4, width // 4)
    table = _position_table(model, variables, _images(height, width))
    np.testing.assert_array_equal(table[:prefix], stored[:prefix])  # The class token's: kept.
    expected = _bilinear(stored[prefix:].reshape(8, 8, 32), *grid).reshape(-1, 32)
    np.testing.assert_allclose(table[prefix:], expected, rtol=1e-6, atol=1e-6)
    # The model at the new size is the one initialised there with the resampled table.
    logits = model.apply(variables, _images(height, width))
    assert logits.shape == (2, 5) and variables["params"]["pos_embedding"].shape[1] == prefix + 64
    resampled = {"params": {**variables["params"], "pos_embedding": jnp.asarray(table[None])}}
    np.testing.assert_array_equal(logits, model.apply(resampled, _images(height, width)))


def test_resample_shrinks_with_jax_image_resize():
    posemb = jnp.asarray(np.random.default_rng(0).standard_normal((1, 1 + 64, 16)), jnp.float32)
    shrunk = vit.resample_posemb(posemb, (4, 4), num_prefix=1)
    expected = jax.image.resize(posemb[0, 1:].reshape(8, 8, 16), (4, 4, 16), "bilinear")
    np.testing.assert_array_equal(shrunk[0, 0], posemb[0, 0])
    np.testing.assert_array_equal(shrunk[0, 1:], expected.reshape(16, 16))
    assert vit.resample_posemb(posemb, (8, 8), num_prefix=1) is posemb


@pytest.mark.parametrize("pool", ["cls", "gap"])
def test_sincos_table_is_computed_for_the_new_grid(pool):
    model = _model(pool, "sincos2d")
    variables = _init(model, 32)
    table = _position_table(model, variables, _images(48, 48))
    expected = vit.sincos_2d(12, 12, 32)
    if pool == "cls":  # The class token gets no fixed position.
        expected = np.concatenate([np.zeros((1, 32), np.float32), expected])
    np.testing.assert_array_equal(table, expected)


def test_a_table_of_a_non_square_grid_cannot_be_resampled():
    model = _model("gap", "learn")
    variables = model.init(jax.random.key(0), _images(32, 16))  # 8x4 patches.
    assert model.apply(variables, _images(32, 16)).shape == (2, 5)
    with pytest.raises(ValueError, match="32 patch positions, not a square grid"):
        model.apply(variables, _images(48, 48))
