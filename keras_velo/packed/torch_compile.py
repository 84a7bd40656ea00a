"""VeLO's update as one compiled program on PyTorch.

Keras runs PyTorch eagerly, so VeLO's update there is ~3,000 separate
kernels, most of them full-size element-wise ones (the MLP's ~150
multiply-adds per parameter each read and write every parameter): 16x
Adam's step on ResNet-50. This module turns it into fused loops:

1. `make_fx` records the aten operations of one update on *fake* tensors
   (no data is read, so none can be baked into the program, and no memory
   is spent; the update has no data-dependent Python branch: it also
   traces under `jax.jit`), so Keras' Python, numpy constants and the
   packed layout's bookkeeping are resolved once, into a graph of ~2,900
   nodes;
2. `torch.compile(graph, fullgraph=True)` hands it to inductor, which
   fuses the element-wise passes into a few C++/OpenMP loops on CPU
   (Triton kernels on GPU).

`compiled_prefab_update` compiles the whole `prefab_update` (packing,
coupled weight decay, the skip guard); with >150k-step accumulation the
wrapper's conditional stays eager and `compiled_packed_update` compiles
the update inside it. Programs are built at the first call (about 30 s
on 2 CPU cores, whatever the model's size) and cached for the process,
keyed by the tensors' shapes, the per-tensor settings and the inputs'
structure, dtypes and device. The program returns the new parameters and
state, which the optimizer assigns: writing them into the variables inside
the program (tried) made inductor's loops ~10% slower and did not lower
ResNet-50's peak memory, which is set by the temporaries inductor keeps
between its loops (~1.5 GB, ~16 floats per parameter), not by the second
copy of the state.

When compilation is not possible (no C++ compiler, an inductor error),
`VeLO(compile_update="auto")` warns once, saying why, and runs eagerly;
`compile_update=True` raises `CompilationUnavailable`. The test suite runs
eagerly (`KERAS_VELO_TORCH_COMPILE=0`, see `tests/conftest.py`) except in
`tests/test_torch_compile.py`, which checks the compiled update against the
golden trajectories, the per-tensor oracle and the eager update.
"""

import collections
import os
import sys
import threading
import warnings

from keras_velo.packed.update import packed_update

ENVIRONMENT_SWITCH = "KERAS_VELO_TORCH_COMPILE"
_CACHE_SIZE = 16
_cache = collections.OrderedDict()
_lock = threading.Lock()


class CompilationUnavailable(RuntimeError):
    """torch.compile could not compile VeLO's update here."""


# What the eager update costs beyond the compiled one, per update, on a
# 2-core CPU (benchmarks/velo_update.py): a fixed part and a part per
# parameter; and about what compiling costs. "auto" compiles when the run
# is expected to win back twice the compile time.
EAGER_OVERHEAD_SECONDS = 0.010
EAGER_OVERHEAD_SECONDS_PER_PARAMETER = 1.1e-7
COMPILE_SECONDS = 30.0


def expected_saving_seconds(num_parameters, num_updates):
    """Seconds a compiled update is expected to save over `num_updates` eager ones."""
    per_update = EAGER_OVERHEAD_SECONDS + EAGER_OVERHEAD_SECONDS_PER_PARAMETER * num_parameters
    return num_updates * per_update


def resolve_compile_update(value, num_parameters, num_updates):
    """Whether to compile VeLO's update in this process (PyTorch only: False elsewhere).

    `True` / `False` are the user's choice. `"auto"` compiles when the run
    (`num_updates` VeLO updates of `num_parameters` parameters) is expected
    to save at least twice `COMPILE_SECONDS`: e.g. ResNet-50 (23.5M
    parameters) from 24 updates, a 1M-parameter MLP from ~500, a 55k one
    from ~3,700; never when the environment sets `KERAS_VELO_TORCH_COMPILE=0`.
    """
    import keras

    if keras.backend.backend() != "torch":
        return False
    if value != "auto":
        return bool(value)
    if os.environ.get(ENVIRONMENT_SWITCH, "1") in ("0", "false", "False"):
        return False
    return expected_saving_seconds(num_parameters, num_updates) >= 2 * COMPILE_SECONDS


def _is_compiling():
    import torch

    return bool(torch.compiler.is_compiling())


class CompiledFunction:
    """`function(*args)` (pure, pytree arguments) run as a compiled program.

    `static_key` names everything the function closes over (a layout's
    shapes, per-tensor settings): with the inputs' structure, shapes,
    dtypes and devices it keys the process-wide cache of programs. The
    program is built at the first call for each key (`make_fx` on fake
    tensors of those inputs, so no data is read or baked in, then
    inductor). If that fails, calls run `function` eagerly from then on,
    after one warning (or raise `CompilationUnavailable` with `strict`).
    Inside a `torch.compile`d caller (Keras' `jit_compile=True` on PyTorch)
    it runs eagerly, for that caller to trace.
    """

    def __init__(self, function, static_key, num_tensors, strict=False):
        self.function = function
        self.static_key = static_key
        self.num_tensors = num_tensors
        self.strict = strict
        self.failure = None

    def __call__(self, *args):
        if self.failure is not None or _is_compiling():
            return self.function(*args)
        leaves, spec = _flat_inputs(args)
        key = (self.static_key, spec,
               tuple((tuple(x.shape), x.dtype, x.device) for x in leaves))
        import torch

        built = []

        def build():
            built.append(True)
            return _build(self.function, spec, leaves, self.num_tensors)

        try:
            program, (out_spec, out_nones) = _cached_program(key, build)
            # torch.compile compiles at a program's first call, before running
            # it: that call is where inductor fails, if it does.
            with torch.no_grad():
                outputs = program(*leaves)
        except Exception as error:  # inductor reports many kinds of failure
            if not built:  # a program that ran before failed: not a compilation problem
                raise
            _forget(key)
            if self.strict:
                raise CompilationUnavailable(_reason(error)) from error
            self.failure = error
            warnings.warn(
                "keras-velo could not compile VeLO's update with torch.compile "
                f"({_reason(error)}); it runs eagerly, several times slower on "
                "large models. Pass `VeLO(compile_update=False)` to skip the "
                "attempt.",
                stacklevel=2,
            )
            return self.function(*args)
        from torch.utils import _pytree as pytree

        return pytree.tree_unflatten(_fill(outputs, out_nones), out_spec)


def compiled_prefab_update(layout, weight_decays, active, strict=False):
    """`prefab_update` without accumulation, compiled whole (packing included).

    Called as `f(theta, state, params, grads, loss, accumulation=None,
    step_scale=..., fraction_trained=...)` like `prefab_update` with these
    settings bound (`accumulation` is None without accumulation); returns
    what it returns.
    """
    from keras_velo.packed.prefab import prefab_update

    weight_decays = None if weight_decays is None else tuple(float(w) for w in weight_decays)

    def update(theta, state, params, grads, loss, step_scale, fraction_trained):
        return prefab_update(
            theta, state, params, grads, loss, weight_decays=weight_decays,
            num_accumulated=1, accumulation=None, step_scale=step_scale,
            fraction_trained=fraction_trained, skip_non_finite=True, active=active,
        )

    key = ("prefab_update", layout.shapes, weight_decays, active)
    compiled = CompiledFunction(update, key, layout.num_tensors, strict)

    def run(theta, state, params, grads, loss, accumulation=None, step_scale=1.0,
            fraction_trained=None):
        return compiled(theta, state, params, grads, loss, step_scale, fraction_trained)

    return run


def compiled_packed_update(layout, active, skip_non_finite, strict=False):
    """A function with `packed_update`'s signature that runs a compiled program.

    For `prefab_update`'s `core` when it accumulates gradients (its
    conditional between accumulating and updating stays eager).
    """
    def update(theta, state, params, grads, loss, step_scale, fraction_trained):
        return packed_update(theta, state, layout, params, grads, loss, step_scale,
                             fraction_trained, active, skip_non_finite)

    compiled = CompiledFunction(
        update, ("packed_update", layout.shapes, active, skip_non_finite),
        layout.num_tensors, strict,
    )

    def run(theta, state, layout_, params, grads, loss, step_scale=1.0,
            fraction_trained=None, active_=None, skip_non_finite_=False):
        if layout_.shapes != layout.shapes or active_ != active or skip_non_finite_ != skip_non_finite:
            raise ValueError(
                "This compiled VeLO update was built for another layout, set of "
                "active tensors or skip setting; get one with compiled_packed_update("
                "layout, active, skip_non_finite) for these."
            )
        return compiled(theta, state, params, grads, loss, step_scale, fraction_trained)

    return run


def _reason(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def _flat_inputs(args):
    """`(tensor leaves, (spec, None positions))` of the update's inputs.

    Numbers become tensors; None leaves (an empty region, no time
    fraction) are left out of the program's inputs and put back by position.
    """
    import torch
    from torch.utils import _pytree as pytree

    leaves, spec = pytree.tree_flatten(args)
    tensors, nones = [], []
    for position, leaf in enumerate(leaves):
        if leaf is None:
            nones.append(position)
            continue
        if not isinstance(leaf, torch.Tensor):
            leaf = torch.as_tensor(leaf, dtype=torch.float32 if isinstance(leaf, float) else None)
        tensors.append(leaf)
    return tensors, (spec, tuple(nones))


def _cached_program(key, build):
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        entry = build()
        _cache[key] = entry
        if len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
        return entry


def _forget(key):
    with _lock:
        _cache.pop(key, None)


def _build(function, spec, leaves, num_tensors):
    import torch
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils import _pytree as pytree

    in_spec, in_nones = spec
    out = {}

    def flat_function(*flat):
        outputs = function(*pytree.tree_unflatten(_fill(flat, in_nones), in_spec))
        flat_out, out["spec"] = pytree.tree_flatten(outputs)
        out["nones"] = tuple(i for i, x in enumerate(flat_out) if x is None)
        return [x for x in flat_out if x is not None]

    print(
        f"keras-velo: compiling VeLO's update for {num_tensors} tensors with "
        "torch.compile (once per model and process; VeLO(compile_update=False) skips it)",
        file=sys.stderr,
    )
    with torch.no_grad():
        graph = make_fx(flat_function, tracing_mode="fake")(*leaves)
        program = torch.compile(graph, fullgraph=True, dynamic=False)
    return program, (out["spec"], out["nones"])


def _fill(tensors, nones):
    """The full leaf list: `tensors` in order, None at the positions `nones`."""
    tensors = list(tensors)
    total = len(tensors) + len(nones)
    source = iter(tensors)
    return [None if i in nones else next(source) for i in range(total)]
