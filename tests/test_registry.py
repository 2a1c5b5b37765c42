"""The registry: names and keyword arguments checked with the closest valid one; entries
registered outside the package reachable from a config."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config

from imgcls_jax import models, registry
from imgcls_jax.models.layers import compute_dtype
from imgcls_jax.training import optimizers
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.config_check import validate


def test_unknown_names_and_arguments_name_the_closest():
    with pytest.raises(ValueError, match=r"config.model.name='renset20' is not known. Did you mean "
                                         r"'resnet20'\?"):  # fmt: skip
        models.build("renset20", num_classes=3)
    with pytest.raises(ValueError, match="takes no argument 'widht'. Did you mean 'width'"):
        models.build("resnet20", num_classes=3, widht=4)
    with pytest.raises(ValueError, match="Did you mean 'adamw'"):
        validate(tiny_config(**{"optimizer.name": "adam_w"}))
    with pytest.raises(ValueError, match="config.schedule.name='cosin'.*Did you mean 'cosine'"):
        validate(tiny_config(**{"schedule.name": "cosin"}))
    with pytest.raises(ValueError, match="config.dataset.source='tfsd'.*Did you mean 'tfds'"):
        validate(tiny_config(**{"dataset.source": "tfsd"}))
    with pytest.raises(ValueError, match="config.model.stem='imagent'.*Did you mean 'imagenet'"):
        validate(tiny_config(**{"model.stem": "imagent"}))
    with pytest.raises(ValueError, match="config.model.dtype='bf16'.*Did you mean 'bfloat16'"):
        validate(tiny_config(**{"model.dtype": "bf16"}))


def test_a_name_registers_once_and_unknown_kinds_say_so():
    registry.register("model", "resnet20", registry.get("model", "resnet20"))  # Same: fine.
    with pytest.raises(ValueError, match="registered twice"):
        registry.register("model", "resnet20", lambda **_: None)
    with pytest.raises(KeyError, match="No 'modle' is registered"):
        registry.names("modle")


def test_build_from_takes_only_the_fields_a_constructor_has():
    """A config section serves every entry of its kind: ResNet ignores the ViT's fields and
    the other way round; explicit arguments win over the section's."""
    fields = {"width": 4, "stem": "small", "patch_size": 4, "pool": "gap", "dtype": "bfloat16"}
    resnet = registry.build_from("model", "resnet8", fields, num_classes=3)
    assert (resnet.width, resnet.stem, resnet.dtype) == (4, "small", jnp.bfloat16)
    vit = registry.build_from("model", "vit_ti", fields, num_classes=3, dtype="float32")
    assert (vit.patch_size, vit.pool, vit.dtype) == (4, "gap", jnp.float32)
    sgd = registry.build_from("optimizer", "sgd", {"momentum": 0.0, "b1": 0.5}, 0.1)
    params = {"w": jnp.ones((2, 2))}
    updates, _ = sgd.update({"w": jnp.ones((2, 2))}, sgd.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1)  # Plain SGD: no momentum, no decay.
    assert "sgd" in registry.names("optimizer") and optimizers.sgd is registry.get(
        "optimizer", "sgd"
    )


class _TinyNet(nn.Module):
    num_classes: int
    width: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.relu(nn.Conv(self.width, (3, 3), dtype=self.dtype)(x.astype(self.dtype)))
        return nn.Dense(self.num_classes, dtype=self.dtype)(x.mean(axis=(1, 2))).astype(jnp.float32)


def test_a_model_registered_outside_the_package_trains_by_name(monkeypatch):
    """As docs/extending.md shows: register, then name it in the config."""
    monkeypatch.setitem(registry._ENTRIES["model"], "tinynet", None)  # Removed afterwards.

    def tinynet(*, num_classes: int, width: int = 32, dtype: str = "float32") -> _TinyNet:
        return _TinyNet(num_classes=num_classes, width=width, dtype=compute_dtype(dtype))

    registry._ENTRIES["model"]["tinynet"] = tinynet
    config = tiny_config(**{"model.name": "tinynet", "model.width": 6})
    validate(config)
    trainer = Trainer(config, synthetic_dataset())
    assert isinstance(trainer.model, _TinyNet) and trainer.model.width == 6
    state = trainer.create_state()
    before = jax.tree.map(np.asarray, state.params)  # The step donates the state.
    batch = {"image": jnp.zeros((32, 8, 8, 1), jnp.uint8), "label": jnp.zeros(32, jnp.int32)}
    new_state, metrics = trainer.train_step(state, batch, trainer.train_key)
    assert int(new_state.step) == 1 and np.isfinite(float(metrics.compute()["loss"]))
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, new_state.params)
    assert all(jax.tree.leaves(changed))


def test_did_you_mean_names_every_equally_close_choice_and_nothing_far():
    choices = ["resnet20", "resnet50", "resnet56", "fashion_mnist_speed"]
    assert registry.closest("resnet5O", choices).startswith(
        " Did you mean 'resnet50' or 'resnet56'? Valid choices:"
    )
    assert registry.closest("nope", choices) == (
        " Valid choices: fashion_mnist_speed, resnet20, resnet50, resnet56."
    )
