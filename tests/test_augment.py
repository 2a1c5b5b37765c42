"""Augmentation ops and pipeline parsing."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from imgcls_jax import augment, registry
from imgcls_jax.augment import ops

IMAGES = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3), maxval=255.0)


def test_flip_twice_is_identity_and_flip_one_mirrors():
    key = jax.random.key(1)
    once = ops.flip_lr(key, IMAGES[0], 1.0)
    np.testing.assert_array_equal(once, IMAGES[0][:, ::-1])
    np.testing.assert_array_equal(ops.flip_lr(key, once, 1.0), IMAGES[0])


@pytest.mark.parametrize("mode", ["constant", "reflect"])
def test_random_crop_is_a_shifted_window(mode):
    fn = jax.jit(lambda k, x: ops.random_crop(k, x, 2, mode))
    out = fn(jax.random.key(3), IMAGES[0])
    assert out.shape == IMAGES[0].shape
    padded = np.pad(np.asarray(IMAGES[0]), ((2, 2), (2, 2), (0, 0)), mode=mode)
    windows = [padded[i : i + 8, j : j + 8] for i in range(5) for j in range(5)]
    assert any(np.array_equal(out, w) for w in windows)
    # Zero padding with a zero-size pad is the identity.
    np.testing.assert_array_equal(ops.random_crop(jax.random.key(0), IMAGES[0], 0), IMAGES[0])


def test_pipeline_is_per_example_and_deterministic():
    fn = jax.jit(augment.build_augment_fn("random_crop(2)|flip_lr"))
    a = fn(jax.random.key(5), IMAGES.astype(jnp.uint8))
    b = fn(jax.random.key(5), IMAGES.astype(jnp.uint8))
    c = fn(jax.random.key(6), IMAGES.astype(jnp.uint8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert a.dtype == jnp.float32 and a.shape == IMAGES.shape
    same = jnp.repeat(IMAGES[:1], 6, axis=0)
    out = fn(jax.random.key(7), same)
    assert len({np.asarray(o).tobytes() for o in out}) > 1  # Different draws per example.


@pytest.mark.parametrize(
    "spec, message",
    [("flip_lrr", "Did you mean 'flip_lr'"), ("random_crop", "bad arguments"),
     ("random_crop(2, 3, 4)", "bad arguments"), ("random_crop(x)", "literals"),
     ("random_crop(2", "closing")],
)  # fmt: skip
def test_bad_pipelines_fail_with_a_helpful_message(spec, message):
    with pytest.raises(ValueError, match=message):
        augment.parse_pipeline(spec)


def test_random_resized_crop_full_box_is_identity_and_output_is_fixed_size():
    image = IMAGES[0]
    same = ops.random_resized_crop(jax.random.key(0), image, 8, (1.0, 1.0), (1.0, 1.0))
    np.testing.assert_allclose(same, image, atol=1e-3)
    fn = jax.jit(jax.vmap(lambda k, x: ops.random_resized_crop(k, x, 5)))
    out = fn(jax.random.split(jax.random.key(1), 6), IMAGES)
    assert out.shape == (6, 5, 5, 3) and out.dtype == jnp.float32
    assert float(out.min()) >= -1e-3 and float(out.max()) <= 255 + 1e-3
    np.testing.assert_array_equal(out, fn(jax.random.split(jax.random.key(1), 6), IMAGES))


@pytest.mark.parametrize("op", [ops.brightness, ops.contrast, ops.saturation])
def test_colour_ops_strength_zero_is_identity_and_stay_in_range(op):
    for channels in (1, 3):
        image = IMAGES[0, ..., :channels]
        np.testing.assert_allclose(op(jax.random.key(0), image, 0.0), image, rtol=1e-5, atol=1e-3)
        out = jax.jit(op, static_argnums=2)(jax.random.key(1), image, 0.9)
        assert out.shape == image.shape and 0 <= float(out.min()) and float(out.max()) <= 255


def test_saturation_is_a_no_op_on_grayscale_and_random_grayscale_is_gray():
    gray = IMAGES[0, ..., :1]
    np.testing.assert_array_equal(ops.saturation(jax.random.key(0), gray, 0.9), gray)
    out = ops.random_grayscale(jax.random.key(0), IMAGES[0], 1.0)
    np.testing.assert_allclose(out[..., 0], out[..., 1])
    np.testing.assert_allclose(out[..., 1], out[..., 2])
    np.testing.assert_array_equal(
        ops.random_grayscale(jax.random.key(0), IMAGES[0], 0.0), IMAGES[0]
    )


def test_every_op_runs_in_a_jitted_pipeline_without_host_callbacks():
    spec = ("random_resized_crop(8)|random_crop(1, 'reflect')|flip_lr|brightness(0.4)|"
            "contrast(0.4)|saturation(0.4)|random_grayscale(0.2)|hue(0.1)|random_erasing(0.5)|"
            "randaugment(2, 9)")  # fmt: skip
    assert {op.__name__ for op, _ in augment.parse_pipeline(spec)} == set(
        registry.names("augment_op")
    )
    fn = jax.jit(augment.build_augment_fn(spec))
    assert "callback" not in fn.lower(jax.random.key(0), IMAGES).as_text()
    out = fn(jax.random.key(0), IMAGES.astype(jnp.uint8))
    assert out.shape == IMAGES.shape and np.isfinite(np.asarray(out)).all()


def _constant_batch(n=4, size=10):
    """Example i is filled with the value 10 * (i + 1), label i."""
    values = 10.0 * (jnp.arange(n) + 1)
    return jnp.broadcast_to(values[:, None, None, None], (n, size, size, 1)), jnp.arange(n)


def _partner(soft, i):
    """The partner of example i of `_constant_batch` (label i), read from its soft label."""
    others = np.asarray(soft[i]).copy()
    others[i] = 0
    return int(np.argmax(others)) if others.max() > 0 else i


@pytest.mark.parametrize("seed", range(4))
def test_cutmix_labels_match_the_pasted_area(seed):
    images, labels = _constant_batch()
    out, soft = augment.mix_batch(jax.random.key(seed), images, labels, 4, 0.0, 1.0, 0.5, 1.0)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    for i in range(4):
        partner = _partner(soft, i)
        own_fraction = float(jnp.mean(out[i] == images[i, 0, 0, 0]))
        if partner == i:  # Pasted over with itself.
            assert own_fraction == 1.0 and float(soft[i, i]) == pytest.approx(1.0)
            continue
        assert float(jnp.mean(out[i] == images[partner, 0, 0, 0])) == pytest.approx(
            1 - own_fraction
        )
        assert float(soft[i, i]) == pytest.approx(own_fraction, abs=1e-6)
        assert float(soft[i, partner]) == pytest.approx(1 - own_fraction, abs=1e-6)


def test_mixup_blends_images_and_labels_by_the_same_weight():
    images, labels = _constant_batch()
    out, soft = augment.mix_batch(jax.random.key(0), images, labels, 4, 0.4, 0.0, 0.5, 1.0)
    np.testing.assert_allclose(soft.sum(-1), 1.0, rtol=1e-6)
    for i in range(4):
        lam, partner = float(soft[i, i]), _partner(soft, i)
        expected = lam * images[i] + (1 - lam) * images[partner] if partner != i else images[i]
        np.testing.assert_allclose(out[i], expected, rtol=1e-5)
    # mix_prob 0: images and one-hot labels pass through unchanged.
    same, hard = augment.mix_batch(jax.random.key(0), images, labels, 4, 0.4, 1.0, 0.5, 0.0)
    np.testing.assert_array_equal(same, images)
    np.testing.assert_array_equal(hard, jax.nn.one_hot(labels, 4))


def test_mixing_partners_are_random_even_for_class_ordered_batches():
    """Examples stored in class order (as every image folder is) still meet partners of every
    class, the same class about 1 time in 10; a reversed batch met only mirror classes."""
    classes, per_class = 10, 10
    labels = jnp.repeat(jnp.arange(classes), per_class)  # 0,0,...,1,1,...: class order.
    images = jnp.zeros((classes * per_class, 4, 4, 1))
    pairs = np.zeros((classes, classes), int)
    for seed in range(30):
        _, soft = augment.mix_batch(
            jax.random.key(seed), images, labels, classes, 1.0, 0.0, 0.5, 1.0
        )
        soft = np.asarray(soft)
        for i, label in enumerate(np.asarray(labels)):
            others = soft[i].copy()
            others[label] = 0
            partner = int(np.argmax(others)) if others.max() > 1e-6 else int(label)
            pairs[label, partner] += 1
    assert (pairs > 0).all()  # All 100 class pairs occur.
    same = np.trace(pairs) / pairs.sum()
    assert 0.06 < same < 0.14, same
    expected = pairs.sum() / classes**2
    assert np.abs(pairs - expected).max() < 0.6 * expected


def test_hue_zero_is_identity_and_a_third_turns_red_green():
    image = IMAGES[0]
    np.testing.assert_allclose(ops.hue(jax.random.key(0), image, 0.0), image, atol=1e-2)
    red = jnp.zeros((2, 2, 3)).at[..., 0].set(255.0)
    shifted = ops._hsv_to_rgb(ops._rgb_to_hsv(red / 255.0).at[..., 0].add(1 / 3)) * 255
    np.testing.assert_allclose(shifted[0, 0], [0, 255, 0], atol=1e-3)
    gray = IMAGES[0, ..., :1]
    np.testing.assert_array_equal(ops.hue(jax.random.key(0), gray, 0.5), gray)


def test_random_erasing_changes_one_rectangle_or_nothing():
    image = jnp.full((16, 16, 3), 100.0)
    never = ops.random_erasing(jax.random.key(0), image, 0.0)
    np.testing.assert_array_equal(never, image)
    changed = 0
    for seed in range(5):
        out = ops.random_erasing(jax.random.key(seed), image, 1.0)
        mask = np.any(np.asarray(out) != 100.0, axis=-1)
        if mask.any():
            changed += 1
            rows, cols = np.where(mask.any(1))[0], np.where(mask.any(0))[0]
            # The noisy pixels lie within one rectangle that covers at most a third of the image.
            assert mask[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1].mean() > 0.9
            assert mask.sum() <= 16 * 16 / 3 + 16
    assert changed >= 4


FULL_RANGE = (
    jnp.asarray(np.random.default_rng(0).integers(0, 256, (12, 12, 3)).astype(np.float32))
    .at[0, 0]
    .set(0.0)
    .at[0, 1]
    .set(255.0)
)


@pytest.mark.parametrize("index", range(len(ops.RANDAUGMENT_OP_NAMES)))
def test_every_randaugment_op_keeps_shape_and_range(index):
    op = jax.jit(ops._RANDAUGMENT_OPS[index])
    for channels in (1, 3):
        image = FULL_RANGE[..., :channels]
        out = op(image, 0.9, -1.0)
        assert out.shape == image.shape and np.isfinite(np.asarray(out)).all()
        assert float(out.min()) >= -1e-3 and float(out.max()) <= 255 + 1e-3
        name = ops.RANDAUGMENT_OP_NAMES[index]
        if name not in ("auto_contrast", "equalize"):  # Magnitude-free ops.
            zero = op(image, 0.0, 1.0)
            np.testing.assert_allclose(
                zero, jnp.floor(image) if name == "posterize" else image, atol=1e-3
            )


def test_geometric_randaugment_ops_move_pixels_exactly():
    image = FULL_RANGE[..., :1]
    quarter = ops._affine(image, ops._rotation(90.0))
    assert any(np.allclose(quarter, np.rot90(image, k, axes=(0, 1)), atol=1e-3) for k in (1, -1))
    shifted = ops._affine(image, jnp.array([[1.0, 0, 0], [0, 1, 2.0]]))
    np.testing.assert_allclose(shifted[:, :-2], image[:, 2:], atol=1e-4)
    np.testing.assert_allclose(shifted[:, -2:], 128.0)


def test_equalize_spreads_a_low_contrast_image():
    low = 100 + FULL_RANGE[..., :1] / 10  # Values in [100, 125.5].
    out = ops._equalize(low, 0.0, 1.0)
    assert float(out.max()) == 255.0 and float(out.min()) == 0.0


def test_randaugment_magnitude_zero_leaves_images_nearly_unchanged():
    fn = jax.jit(jax.vmap(lambda k, x: ops.randaugment(k, x, 2, 0.0)))
    images = jnp.stack([FULL_RANGE] * 8)
    out = fn(jax.random.split(jax.random.key(0), 8), images)
    assert float(jnp.mean(jnp.abs(out - images))) < 6.0  # Only equalize moves values, slightly.
    strong = jax.jit(jax.vmap(lambda k, x: ops.randaugment(k, x, 2, 9.0)))
    moved = strong(jax.random.split(jax.random.key(0), 8), images)
    assert float(jnp.mean(jnp.abs(moved - images))) > float(jnp.mean(jnp.abs(out - images)))


def test_center_crop_takes_the_middle_and_full_size_is_identity():
    image = jnp.arange(6 * 8 * 1, dtype=jnp.float32).reshape(6, 8, 1)
    np.testing.assert_array_equal(ops.center_crop(image, 6)[:, :, 0], image[:, 1:7, 0])
    np.testing.assert_array_equal(ops.center_crop(IMAGES[0], 8), IMAGES[0])
    with pytest.raises(ValueError, match="at least"):
        ops.center_crop(IMAGES[0], 9)


def test_resize_matches_tensorflow_and_keeps_the_aspect_ratio():
    import tensorflow as tf

    image = np.asarray(jax.random.uniform(jax.random.key(2), (20, 30, 3), maxval=255.0))
    out = ops.resize(jnp.asarray(image), 10)
    assert out.shape == (10, 15, 3)  # Shorter side 20 -> 10, the other scaled alike.
    reference = tf.image.resize(image, (10, 15), method="bilinear", antialias=True).numpy()
    np.testing.assert_allclose(out, reference, atol=1e-2)
    np.testing.assert_allclose(ops.resize(IMAGES[0], 8), IMAGES[0], atol=1e-3)


def test_eval_pipeline_resizes_then_crops_per_batch_and_rejects_train_ops():
    fn = jax.jit(augment.build_eval_fn("resize(12)|center_crop(10)"))
    out = fn(IMAGES.astype(jnp.uint8))
    assert out.shape == (6, 10, 10, 3) and out.dtype == jnp.float32
    expected = ops.center_crop(ops.resize(IMAGES[3].astype(jnp.uint8) * 1.0, 12), 10)
    np.testing.assert_allclose(out[3], expected, atol=1e-4)
    np.testing.assert_array_equal(augment.build_eval_fn("")(IMAGES), IMAGES)
    with pytest.raises(ValueError, match="Did you mean 'center_crop'"):
        augment.parse_pipeline("random_crop(4)", training=False)
    with pytest.raises(ValueError, match="bad arguments"):
        augment.parse_pipeline("resize", training=False)
