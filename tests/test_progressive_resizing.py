"""Progressive resizing: the schedule of image sizes, one program per size, calls that stop at
a size change, and a resume across a change that is bit-identical."""

import shutil

import jax
import numpy as np
import pytest
from conftest import tiny_config, trainer_restore

from imgcls_jax.config import progressive_sizes
from imgcls_jax.training import cadence, config_check, steps
from imgcls_jax.training.builder import Trainer
from imgcls_jax.training.loop import train_and_evaluate


def test_the_sizes_parse_and_bad_ones_name_the_fix():
    assert progressive_sizes("0:20, 2.5:24,5:28") == [(0.0, 20), (2.5, 24), (5.0, 28)]
    assert progressive_sizes("") == []
    for bad in ("1:20,3:28", "0:20,x", "0:20,0:24", "0:0"):
        with pytest.raises(ValueError, match="progressive_sizes"):
            config_check.validate(tiny_config(**{"training.progressive_sizes": bad}))


def test_calls_stop_at_each_size_change():
    config = tiny_config(**{"training.progressive_sizes": "0:6,0.5:8", "training.num_train_steps": 20,
                            "training.log_every_steps": 100, "training.steps_per_dispatch": 4})  # fmt: skip
    c = cadence.build_cadence(config.training, 10, "cpu")
    assert c.train_sizes == ((0, 6), (5, 8))
    assert [c.train_size_after(s) for s in (0, 4, 5, 19)] == [6, 6, 8, 8]
    calls, step = [], 0
    while step < c.total_steps:
        calls.append(c.steps_in_next_call(step))
        step += calls[-1]
    assert calls == [4, 1, 4, 1, 4, 4, 2]  # Cut at the change (5) and at the evaluation (10).


def test_the_step_trains_on_the_resized_images():
    images = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 1)).astype(np.float32)
    resized = np.asarray(steps.resize_images(images, 6))
    assert resized.shape == (2, 6, 6, 1)
    reference = jax.image.resize(images, (2, 6, 6, 1), "bilinear")
    np.testing.assert_array_equal(resized, reference)
    np.testing.assert_array_equal(steps.resize_images(images, 8), images)  # Same size: as is.


@pytest.mark.slow
def test_a_resume_across_a_size_change_is_bit_identical(tmp_path, dataset):
    k = 5  # 256 examples / batch 32 = 8 steps per epoch; sizes change at step 6.
    config = tiny_config(**{"training.num_train_steps": 12, "input.batch_size": 32,
                            "training.checkpoint_every_steps": k, "training.eval_every_epochs": 10.0,
                            "training.progressive_sizes": "0:6,0.75:8",
                            "augment.train": "random_crop(1)|flip_lr"})  # fmt: skip
    train_and_evaluate(config, str(tmp_path / "full"), dataset)
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    for step in (10, 12):
        shutil.rmtree(tmp_path / "resumed" / "checkpoints" / str(step))
    train_and_evaluate(config, str(tmp_path / "resumed"), dataset)
    a = trainer_restore(Trainer(config, dataset), tmp_path / "full")[0]
    b = trainer_restore(Trainer(config, dataset), tmp_path / "resumed")[0]
    assert int(a.step) == int(b.step) == 12
    jax.tree.map(np.testing.assert_array_equal, (a.params, a.opt_state, a.batch_stats),
                 (b.params, b.opt_state, b.batch_stats))  # fmt: skip
    # And the sizes mattered: a run at one size ends elsewhere.
    fixed = tiny_config(**{"training.num_train_steps": 12, "input.batch_size": 32,
                           "training.checkpoint_every_steps": k, "training.eval_every_epochs": 10.0,
                           "augment.train": "random_crop(1)|flip_lr"})  # fmt: skip
    train_and_evaluate(fixed, str(tmp_path / "fixed"), dataset)
    c = trainer_restore(Trainer(fixed, dataset), tmp_path / "fixed")[0]
    assert not np.array_equal(a.params["head"]["kernel"], c.params["head"]["kernel"])
