"""The train state: everything that changes during training, as one pytree, and the
functions that make or move one."""

from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. `ema` holds the exponential moving average
    of the parameters and batch statistics ({"params", "batch_stats"}), or {} without one."""

    step: jax.Array
    params: Any
    batch_stats: Any
    opt_state: Any
    ema: Any = flax.struct.field(default_factory=dict)

    def ema_state(self) -> TrainState:
        """This state with the averaged weights in place of the trained ones (to evaluate)."""
        return self.replace(params=self.ema["params"], batch_stats=self.ema["batch_stats"])


def with_ema(state: TrainState, enabled: bool) -> TrainState:
    """`state` with its average started at its current weights, when `enabled`."""
    if not enabled:
        return state
    return state.replace(ema={"params": state.params, "batch_stats": state.batch_stats})


def ema_decay_at(update: jax.Array, decay: float, warmup: bool) -> jax.Array:
    """The decay of the `update`-th average update (1-based): `decay`, or with timm's warm-up
    (ModelEmaV3: gamma 1, power 2/3) 1 - (1 + t)^(-2/3) with t = update - 1, capped at
    `decay`; the first update copies the weights."""
    if not warmup:
        return jnp.float32(decay)
    t = jnp.maximum(update - 1, 0).astype(jnp.float32)
    return jnp.minimum(decay, 1.0 - (1.0 + t) ** (-2.0 / 3.0))


def init_state(
    key: jax.Array,
    model: nn.Module,
    tx: optax.GradientTransformation,
    image_shape: tuple,
    ema: bool = False,
) -> TrainState:
    """Initialises parameters, batch statistics, optimizer state and (`ema`) the average."""
    variables = model.init(key, jnp.zeros((1, *image_shape), jnp.float32), train=False)
    return replace_variables(variables, tx, ema)


def replace_variables(
    variables: dict[str, Any], tx: optax.GradientTransformation, ema: bool = False
) -> TrainState:
    """A step-0 state holding `variables` (e.g. pretrained ones), a fresh optimizer state and
    (`ema`) an average starting at them."""
    state = TrainState(
        step=jnp.zeros((), jnp.int32),
        params=variables["params"],
        batch_stats=variables.get("batch_stats", {}),
        opt_state=tx.init(variables["params"]),
    )
    return with_ema(state, ema)


def jump_to_step(state: TrainState, step: jax.Array) -> TrainState:
    """`state` moved on to `step` without training: its step and every optimizer-state
    counter (schedules, bias corrections) set to `step`, the weights unchanged. A rewind
    uses it to skip the batches (and the schedule) of the steps in between."""
    opt_state = state.opt_state
    if optax.tree_utils.tree_get_all_with_path(opt_state, "count"):
        opt_state = optax.tree_utils.tree_set(opt_state, count=jnp.asarray(step, jnp.int32))
    return state.replace(step=jnp.asarray(step, state.step.dtype), opt_state=opt_state)
