"""The state's initialisation, compiled with `compile_options.rarely_run`, computes bitwise
what the default compilation computes."""

import jax
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config

from imgcls_jax import checkpoint, compile_options
from imgcls_jax.trainer import Trainer

MODELS = {
    "resnet8": {"model.name": "resnet8", "model.width": 4},
    "airbench": {"model.name": "airbench", "model.width": 8},
    "vit": {"model.name": "vit_ti", "model.patch_size": 4},
}


@pytest.mark.parametrize("model", MODELS)
def test_the_state_initialises_bitwise_as_with_the_default_compilation(model, monkeypatch):
    from imgcls_jax.models import vit

    monkeypatch.setitem(vit.VARIANTS, "vit_ti", (32, 2, 64, 2))  # Compiles in seconds.
    config = tiny_config(**MODELS[model], **{"optimizer.name": "adamw", "training.ema_decay": 0.9})
    trainer = Trainer(config, synthetic_dataset(num_train=64))
    assert compile_options.rarely_run("cpu") and trainer.mesh.devices.flat[0].platform == "cpu"
    state = trainer.create_state()  # Compiled with compile_options.rarely_run.
    default = jax.jit(trainer.init_state.__wrapped__)(trainer.init_key)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    for path, a, b in zip(paths, jax.tree.leaves(state), jax.tree.leaves(default), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=path)
    assert checkpoint.state_checksums(state) == checkpoint.state_checksums(default)
