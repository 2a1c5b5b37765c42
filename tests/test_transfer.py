"""Fine-tuning from a converted checkpoint: loading, head re-initialisation, channel
adaptation, freezing (parameters and BatchNorm statistics), linear probe, layer-wise decay."""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_config

from imgcls_jax import convert
from imgcls_jax.models import build_model
from imgcls_jax.training import transfer
from imgcls_jax.training.builder import Trainer

WIDTH = 4


def _pretrained(directory, num_classes, channels=3, width=WIDTH, seed=0):
    """A 'pretrained' ResNet-8 checkpoint: random weights and statistics, saved as converted."""
    config = tiny_config(**{"model.width": width})
    model = build_model(config.model, num_classes)
    variables = model.init(jax.random.key(seed), jnp.zeros((1, 8, 8, channels)))
    leaves, treedef = jax.tree.flatten(variables)
    keys = jax.random.split(jax.random.key(seed + 1), len(leaves))
    variables = treedef.unflatten(
        [np.asarray(jnp.abs(jax.random.normal(k, x.shape)) + 0.5) for x, k in zip(leaves, keys)]
    )
    metadata = {"architecture": "resnet8", "width": width, "stem": "small",
                "num_classes": num_classes, "input_size": 8, "mean": [0.5] * 3,
                "std": [0.25] * 3, "class_names": [], "source": "test", "source_sha256": ""}  # fmt: skip
    convert.save_pretrained(str(directory), variables, metadata)
    return variables


def _flat(tree):
    return {
        transfer.path_name(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(tree)
    }


@pytest.mark.slow
def test_backbone_loads_head_is_reinitialised_and_gray_input_adapts(tmp_path, dataset):
    pretrained = _pretrained(
        tmp_path / "ckpt", num_classes=10
    )  # Our data has 4 classes, 1 channel.
    config = tiny_config(**{"model.width": WIDTH, "transfer.checkpoint": str(tmp_path / "ckpt")})
    trainer = Trainer(config, dataset)
    assert trainer.mean == (0.5,) and trainer.std == (0.25,)  # The checkpoint's, for 1 channel.
    state = trainer.create_state()
    loaded = _flat({"params": state.params, "batch_stats": state.batch_stats})
    source = _flat(pretrained)
    fresh = _flat(
        {"params": Trainer(tiny_config(**{"model.width": WIDTH}), dataset).create_state().params}
    )
    for name, value in loaded.items():
        if name.startswith("params/head/"):
            np.testing.assert_array_equal(value, fresh[name])
        elif name == "params/stem_conv/kernel":
            np.testing.assert_allclose(value, source[name].sum(axis=2, keepdims=True), rtol=1e-6)
        else:
            np.testing.assert_array_equal(value, source[name])


def test_adapted_gray_model_computes_what_the_rgb_model_computes_on_gray_images(tmp_path, dataset):
    pretrained = _pretrained(tmp_path / "ckpt", num_classes=4)  # Same classes: head kept too.
    config = tiny_config(**{"model.width": WIDTH, "transfer.checkpoint": str(tmp_path / "ckpt")})
    trainer = Trainer(config, dataset)
    state = trainer.create_state()
    gray = dataset.test.images[:5].astype(np.float32)
    ours = trainer.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                               (gray / 255 - 0.5) / 0.25)  # fmt: skip
    rgb = np.repeat(gray, 3, axis=-1)
    theirs = build_model(config.model, 4).apply(pretrained, (rgb / 255 - 0.5) / 0.25)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_checkpoint_of_another_architecture_or_shape_is_an_error_naming_it(tmp_path, dataset):
    _pretrained(tmp_path / "wide", num_classes=4, width=8)
    config = tiny_config(**{"model.width": WIDTH, "transfer.checkpoint": str(tmp_path / "wide")})
    with pytest.raises(ValueError, match="does not match config.model"):
        Trainer(config, dataset)
    fresh = {"params": {"stem_conv": {"kernel": np.zeros((3, 3, 1, 4))},
                        "head": {"kernel": np.zeros((8, 4))}}, "batch_stats": {}}  # fmt: skip
    bad = {"params": {"stem_conv": {"kernel": np.zeros((5, 5, 3, 4))},
                      "head": {"kernel": np.zeros((8, 9))}, "extra": {"bias": np.zeros(2)}},
           "batch_stats": {}}  # fmt: skip
    with pytest.raises(ValueError) as error:
        transfer.merge_pretrained(fresh, bad, channels=1, stem_kernel="stem_conv/kernel")
    assert "params/stem_conv/kernel: checkpoint (5, 5, 1, 4) vs model (3, 3, 1, 4)" in str(
        error.value
    )
    assert "params/extra/bias: in the checkpoint but not in the model" in str(error.value)
    assert "head" not in str(error.value)  # A head of another size is re-initialised instead.


def _train_steps(trainer, steps=3):
    state = trainer.create_state()
    start = jax.device_get(state)
    batch = {"image": jnp.asarray(trainer.dataset.train.images[:32]),
             "label": jnp.asarray(trainer.dataset.train.labels[:32])}  # fmt: skip
    for _ in range(steps):
        state, _ = trainer.train_step(state, batch, trainer.train_key)
    return start, jax.device_get(state)


@pytest.mark.slow
@pytest.mark.parametrize("freeze, linear_probe", [("^(stem|BasicBlock_0/)", False), ("", True)])
def test_frozen_parameters_and_their_statistics_stay_bit_identical(
    tmp_path, dataset, caplog, freeze, linear_probe
):
    _pretrained(tmp_path / "ckpt", num_classes=4)
    config = tiny_config(**{"model.width": WIDTH, "transfer.checkpoint": str(tmp_path / "ckpt"),
                            "transfer.freeze": freeze, "transfer.linear_probe": linear_probe,
                            "input.batch_size": 32, "optimizer.weight_decay": 5e-4})  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer = Trainer(config, dataset)
    assert "Frozen:" in caplog.text
    start, end = _train_steps(trainer)

    def is_frozen(name):
        return (
            name.split("/")[0] != "head"
            if linear_probe
            else name.startswith(("stem", "BasicBlock_0"))
        )

    params_start, params_end = _flat(start.params), _flat(end.params)
    for name in params_start:
        same = np.array_equal(params_start[name], params_end[name])
        assert same == is_frozen(name), name
    stats_start, stats_end = _flat(start.batch_stats), _flat(end.batch_stats)
    for name in stats_start:
        if is_frozen(name):
            np.testing.assert_array_equal(stats_start[name], stats_end[name])
        else:
            assert not np.array_equal(stats_start[name], stats_end[name]), name


def test_frozen_batchnorm_layers_compute_in_inference_mode_during_training(tmp_path, dataset):
    from imgcls_jax.training import steps

    _pretrained(tmp_path / "ckpt", num_classes=4)
    config = tiny_config(**{"model.width": WIDTH, "transfer.checkpoint": str(tmp_path / "ckpt"),
                            "transfer.linear_probe": True})  # fmt: skip
    trainer = Trainer(config, dataset)
    norms = transfer.frozen_norms(trainer.frozen)
    assert "stem_norm" in norms and "BasicBlock_2/proj_norm" in norms
    state = trainer.create_state()
    variables = {"params": state.params, "batch_stats": state.batch_stats}
    images = (dataset.test.images[:16].astype(np.float32) / 255 - 0.5) / 0.25
    evaluated = trainer.model.apply(variables, images, train=False)
    import flax.linen as nn

    with nn.intercept_methods(steps.frozen_norm_interceptor(norms)):
        trained, _ = trainer.model.apply(variables, images, train=True, mutable=["batch_stats"])
    np.testing.assert_allclose(trained, evaluated, rtol=1e-5, atol=1e-5)
    plain, _ = trainer.model.apply(variables, images, train=True, mutable=["batch_stats"])
    assert not np.allclose(plain, evaluated, atol=1e-3)  # Batch statistics differ.


@pytest.mark.slow
def test_layer_decay_scales_each_layers_update(dataset):
    overrides = {"model.width": WIDTH, "input.batch_size": 32, "optimizer.momentum": 0.0,
                 "optimizer.weight_decay": 0.0, "schedule.name": "constant"}  # fmt: skip
    plain = _train_steps(Trainer(tiny_config(**overrides), dataset), steps=1)
    decayed = _train_steps(
        Trainer(tiny_config(**overrides, **{"transfer.layer_decay": 0.5}), dataset), steps=1
    )
    groups = transfer.layer_groups(plain[0].params)
    assert groups == ["stem", "BasicBlock_0", "BasicBlock_1", "BasicBlock_2", "head"]
    for name, start in _flat(plain[0].params).items():
        depth = 4 - groups.index(name.split("/")[0].removesuffix("_conv").removesuffix("_norm"))
        step_plain = _flat(plain[1].params)[name] - start
        step_decayed = _flat(decayed[1].params)[name] - start
        np.testing.assert_allclose(step_decayed, 0.5**depth * step_plain, rtol=1e-4, atol=1e-7)


def test_a_freeze_pattern_that_matches_no_parameter_is_an_error_showing_the_paths(dataset):
    config = tiny_config(**{"model.width": WIDTH, "transfer.freeze": "BatchNorm_0"})
    with pytest.raises(ValueError, match=r"freeze='BatchNorm_0' matches no parameter.*'stem_norm/"):
        Trainer(config, dataset)
    frozen = transfer.frozen_mask({"head": {"bias": 0}, "stem_conv": {"kernel": 0}}, "^stem", False)
    assert frozen == {"head": {"bias": False}, "stem_conv": {"kernel": True}}


def test_adapt_input_channels_preserves_the_convolution_of_gray_images():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 3, 5)).astype(np.float32)
    gray = np.random.default_rng(1).normal(size=(1, 6, 6, 1)).astype(np.float32)

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))  # fmt: skip

    np.testing.assert_allclose(
        conv(gray, transfer.adapt_input_channels(kernel, 1)), conv(np.repeat(gray, 3, -1), kernel),
        rtol=1e-5, atol=1e-5,
    )  # fmt: skip
    assert transfer.adapt_input_channels(kernel, 4).shape == (3, 3, 4, 5)
