"""The compiled train step: its size grows with the model, not faster."""

import jax
import pytest
from conftest import synthetic_dataset, tiny_config

from imgcls_jax.training.builder import Trainer


@pytest.mark.slow
def test_compiled_step_grows_linearly_with_the_number_of_state_arrays():
    # The non-finite gate reads every array of the state; computed in each consumer, it made
    # the compiled step O(arrays^2) (ResNet-20 with AdamW and an EMA: 4.3x ResNet-8's size).
    dataset = synthetic_dataset(num_train=16, num_classes=4)
    sizes = {}
    for name in ("resnet8", "resnet20"):
        config = tiny_config(**{"input.batch_size": 16, "model.name": name, "model.width": 4,
                                "optimizer.name": "adamw", "training.ema_decay": 0.9,
                                "augment.train": ""})  # fmt: skip
        trainer = Trainer(config, dataset)
        state = trainer.create_state()
        batch = {"image": dataset.train.images[:16], "label": dataset.train.labels[:16]}
        compiled = trainer.train_step.lower(state, batch, trainer.train_key).compile()
        sizes[name] = (len(compiled.as_text().splitlines()), len(jax.tree.leaves(state)))
    (small_lines, small_arrays), (large_lines, large_arrays) = sizes.values()
    assert large_lines / small_lines < 1.25 * large_arrays / small_arrays, sizes
