"""The Keras variables that hold VeLO's theta and state inside the optimizer.

`VeLO.build` creates them through the optimizer's `add_variable` (so Keras
saves, restores and, on JAX, threads them through `stateless_apply`), one
variable per field of `VeLOState` (the packed layout keeps their number
independent of the model's), one per theta leaf, plus the gradient
accumulation sums and the last update's diagnostics. `read` and `assign`
turn them into the pure functions' structures and back; `record` keeps an
update's diagnostics and skip counters; the horizon VeLO is told is
written here too.

Initial values go in through initializers, never `assign`: on TensorFlow,
`build` may run inside the first traced train step, where an assign would
become part of every step.
"""

import keras
import numpy as np
from keras import ops

from keras_velo.maths.accumulators import Accumulators, accumulator_shapes
from keras_velo.maths.loss_features import RUNNING_MIN_INIT, LossBuffer, loss_ema_decays
from keras_velo.maths.tensorwise_update import UnpackedState
from keras_velo.maths.theta import leaf_name, theta_shapes, unflatten_theta
from keras_velo.packed.packing import LANES
from keras_velo.packed.prefab import GradientAccumulation
from keras_velo.packed.update import VeLOState
from keras_velo.training.sharded_update import sharded_state_layouts

# VeLO's state stays float32 whatever the parameters' dtype (the reference
# stores it in the parameter dtype; identical for float32 parameters).
STATE_DTYPE = "float32"


class _Constant(keras.initializers.Initializer):
    """Initializer returning a fixed numpy array (not serialised: state only)."""

    def __init__(self, value):
        self.value = np.asarray(value)

    def __call__(self, shape, dtype=None):
        return ops.cast(ops.reshape(ops.convert_to_tensor(self.value), shape), dtype)


class StateVariables:
    """VeLO's variables for one model (see the module docstring).

    Args:
        optimizer: the `VeLO` instance (its `add_variable` creates them).
        layout: `PackedLayout` of the model's trainable variables.
        theta: flat theta `{path: numpy array}` to start from, or None
            (zeros of the default shapes; restored from a save later).
        velo_steps: the horizon VeLO is told, or None if not known yet.
        num_accumulated: calls averaged per VeLO update (1: no sums kept).
    """

    def __init__(self, optimizer, layout, theta, velo_steps, num_accumulated, layouts=None):
        self._optimizer = optimizer
        shapes = theta_shapes()
        theta = theta or {path: None for path in shapes}
        self.theta = {
            path: self._new(
                shapes[path] if value is None else value.shape,
                "theta_" + leaf_name(path).replace("/", "_").replace("~", "top"),
                value,
            )
            for path, value in theta.items()
        }
        hidden_init = theta[("lstm_init_state", "hidden")]
        cell_init = theta[("lstm_init_state", "cell")]
        width = shapes[("lstm_init_state", "hidden")][1] if hidden_init is None \
            else hidden_init.shape[1]

        def tiled(init):
            return None if init is None else np.tile(np.asarray(init, np.float32), (layout.num_tensors, 1))

        common = dict(
            iteration=self._new((), "velo_iteration", dtype="int32"),
            num_steps=self._new(
                (), "velo_num_steps", None if velo_steps is None else np.int32(velo_steps),
                "int32",
            ),
            loss_buffer=LossBuffer(
                means=self._new((10,), "loss_means"),
                running_min=self._new(
                    (10,), "loss_running_min", np.full([10], RUNNING_MIN_INIT, np.float32)
                ),
                decays=self._new(
                    (10,), "loss_decays",
                    None if velo_steps is None else loss_ema_decays(velo_steps),
                ),
                iteration=self._new((), "loss_iteration", dtype="int32"),
            ),
            lstm_hidden=self._new((layout.num_tensors, width), "velo_lstm_hidden",
                                  tiled(hidden_init)),
            lstm_cell=self._new((layout.num_tensors, width), "velo_lstm_cell", tiled(cell_init)),
        )
        if layouts is None:
            self.state = VeLOState(
                factored=self._region_variables(layout.factored, "factored"),
                diagonal=self._region_variables(layout.diagonal, "diagonal"),
                **common,
            )
        else:  # sharded parameters: one set per tensor, laid out like it
            self.state = UnpackedState(
                accumulators=tuple(
                    self._tensor_variables(i, shape, tensor_layout)
                    for i, (shape, tensor_layout) in enumerate(zip(layout.shapes, layouts))
                ),
                **common,
            )
        self.accumulation = None
        if num_accumulated > 1:
            self.accumulation = GradientAccumulation(
                tuple(
                    None if region.empty else self._new(region.shape, f"velo_{name}_grad_sum")
                    for region, name in ((layout.factored, "factored"),
                                         (layout.diagonal, "diagonal"))
                ),
                self._new((), "velo_loss_sum"),
                self._new((), "velo_accumulated_calls", dtype="int32"),
            )
        self.skipped_steps = self._new((), "velo_skipped_steps", dtype="int32")
        self.consecutive_skips = self._new((), "velo_consecutive_skips", dtype="int32")
        # Why the last update was skipped: `health.SKIP_CAUSES` (0: it was not).
        self.last_skip_cause = self._new((), "velo_last_skip_cause", dtype="int32")
        self.last_loss_features = self._new((9,), "velo_last_loss_features")
        self.last_fraction = self._new((), "velo_last_fraction_trained")
        self.last_lr_mult = self._new((layout.num_tensors,), "velo_last_lr_mult")
        self.last_step_rms = self._new((layout.num_tensors,), "velo_last_step_rms")

    def _new(self, shape, name, value=None, dtype=STATE_DTYPE, layout=None):
        """An optimizer variable starting at `value` (numpy) or zeros."""
        initializer = "zeros" if value is None else _Constant(value)
        return self._optimizer.add_variable(
            tuple(shape), initializer=initializer, dtype=dtype, name=name, layout=layout
        )

    def _tensor_variables(self, index, shape, tensor_layout):
        """One tensor's `Accumulators` in the reference's shapes, laid out like the tensor."""
        shapes = accumulator_shapes(shape)
        layouts = sharded_state_layouts(shape, tensor_layout)
        return Accumulators(*(
            None if field_shape is None
            else self._new(field_shape, f"velo_{index}_{field}", layout=field_layout)
            for field, field_shape, field_layout in zip(Accumulators._fields, shapes, layouts)
        ))

    def _region_variables(self, region, name):
        if region.empty:
            return None
        momentum = self._new((3,) + region.shape, f"velo_{name}_momentum")
        rms = self._new(region.shape, f"velo_{name}_rms")
        if region.factored:
            return Accumulators(
                momentum,
                rms,
                row_moment=self._new((3, region.num_runs + 1), "velo_row_moment"),
                col_moment=self._new(
                    (3, region.num_lane_groups + 1, LANES), "velo_col_moment"
                ),
            )
        return Accumulators(
            momentum, rms, diag_moment=self._new((3,) + region.shape, "velo_diag_moment")
        )

    def theta_values(self):
        """theta as a nested dict of the variables' current values."""
        return unflatten_theta({p: v.value for p, v in self.theta.items()})

    @staticmethod
    def read(variables):
        """The structure `variables` with each variable replaced by its value."""
        return keras.tree.map_structure(lambda v: None if v is None else v.value, variables)

    def assign(self, variables, values):
        """Assigns `values` (same structure) to `variables`, skipping `num_steps`."""
        for variable, value in zip(keras.tree.flatten(variables), keras.tree.flatten(values)):
            if variable is not None and variable is not self.state.num_steps:
                self._optimizer.assign(variable, value)

    # ---------------------------------------------------------------- horizon

    def updates_done(self):
        """VeLO updates made so far (read eagerly)."""
        return int(ops.convert_to_numpy(self.state.iteration.value))

    def horizon_steps(self):
        """The `num_steps` VeLO is told (read eagerly)."""
        return int(ops.convert_to_numpy(self.state.num_steps.value))

    def set_horizon_steps(self, velo_steps):
        """Tells VeLO a new horizon: `num_steps` and the loss averages' decays."""
        self.state.num_steps.assign(velo_steps)
        self.state.loss_buffer.decays.assign(loss_ema_decays(velo_steps))

    # ------------------------------------------------------------ diagnostics

    def record(self, diagnostics, active, loss):
        """Keeps an update's `StepDiagnostics` and the skip counters.

        `active` (None or one bool per tensor) keeps the last values of
        tensors left out of the update; `loss` is the loss it was given
        (why it was skipped: `health.SKIP_CAUSES`).
        """
        assign = self._optimizer.assign
        skipped = ops.cast(diagnostics.skipped, "int32")
        assign(self.skipped_steps, self.skipped_steps.value + skipped)
        assign(self.consecutive_skips, (self.consecutive_skips.value + 1) * skipped)
        cause = ops.where(
            ops.logical_not(ops.isfinite(loss)),
            1,
            ops.where(diagnostics.gradients_finite, 3, 2),
        )
        assign(self.last_skip_cause, ops.cast(cause, "int32") * skipped)
        assign(self.last_fraction, diagnostics.fraction_trained)
        assign(self.last_loss_features, diagnostics.loss_features)
        for variable, value in ((self.last_lr_mult, diagnostics.lr_mult),
                                (self.last_step_rms, diagnostics.step_rms)):
            if active is not None:
                value = ops.where(ops.convert_to_tensor(active), value, variable.value)
            assign(variable, value)

    def health_variables(self):
        """`{name: variable}` of the counters the `fit` guard watches."""
        return {
            "consecutive_skips": self.consecutive_skips,
            "skipped_steps": self.skipped_steps,
            "skip_cause": self.last_skip_cause,
            "iteration": self.state.iteration,
        }

    def last_update(self):
        """What the last update recorded, as plain Python values (`VeLO.diagnostics`)."""
        value = lambda v: ops.convert_to_numpy(v.value)  # noqa: E731
        return {
            "fraction_trained": float(value(self.last_fraction)),
            "loss_features": value(self.last_loss_features).tolist(),
            "lr_mult": value(self.last_lr_mult).tolist(),
            "step_rms": value(self.last_step_rms).tolist(),
            "iteration": int(value(self.state.iteration)),
            "skipped_steps": int(value(self.skipped_steps)),
            "consecutive_skips": int(value(self.consecutive_skips)),
        }
