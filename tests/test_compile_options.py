"""The state's initialisation, compiled with `compile_options.rarely_run`, computes what the
default compilation computes: integers bitwise, floats to within a few ulps (XLA 0.12's LLVM
level 1 rounds a few elements of a kernel's initialisation differently; XLA 0.10's did not)."""

import jax
import numpy as np
import pytest
from conftest import synthetic_dataset, tiny_config

from imgcls_jax.runtime import compile_options
from imgcls_jax.training.builder import Trainer

MODELS = {
    "resnet8": {"model.name": "resnet8", "model.width": 4},
    "airbench": {"model.name": "airbench", "model.width": 8},
    "vit": {"model.name": "vit_ti", "model.patch_size": 4},
}


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_the_state_initialises_as_with_the_default_compilation(model, monkeypatch):
    from imgcls_jax.models import vit

    monkeypatch.setitem(vit.VARIANTS, "vit_ti", (32, 2, 64, 2))  # Compiles in seconds.
    config = tiny_config(**MODELS[model], **{"optimizer.name": "adamw", "training.ema_decay": 0.9})
    trainer = Trainer(config, synthetic_dataset(num_train=64))
    assert compile_options.rarely_run("cpu") and trainer.mesh.devices.flat[0].platform == "cpu"
    state = trainer.create_state()  # Compiled with compile_options.rarely_run.
    default = jax.jit(trainer.init_state.__wrapped__)(trainer.init_key)
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(state)[0]]
    differing = 0
    for path, a, b in zip(paths, jax.tree.leaves(state), jax.tree.leaves(default), strict=True):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=path)
            differing += int(np.sum(a != b))
        else:
            np.testing.assert_array_equal(a, b, err_msg=path)
    # A handful of elements at most, out of the whole state.
    assert differing <= 1e-3 * sum(x.size for x in jax.tree.leaves(state))
