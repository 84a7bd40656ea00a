"""An independent VeLO: the reference's update, one tensor at a time, in float32 numpy.

Written from `shared/spec/velo_reference.md` alone (section numbers below),
sharing no code with `keras_velo`: no packing, no folded normalisers, no
unrolled MLP, the decay axis last as in the reference. The tests run it
beside keras-velo's packed update on inputs the golden set does not cover
(`test_oracle_property.py`) and check it against the golden trajectories
first (`test_oracle_matches_the_golden_trajectories`), so that a bug in the
oracle cannot hide one in the package.

State per tensor (reference shapes, decay axis last): `m` `S+(3,)`, `rms`
`S+(1,)`, and `v_row` / `v_col` (factored) or `v_diag` (not), `S...+(3,)`.

>>> state = init_state(theta, [(3, 2), (2,)], num_steps=100)
>>> params, state = update(theta, state, params, grads, loss=1.0)
"""

import dataclasses

import numpy as np

F32 = np.float32
MOMENTUM_DECAYS = np.asarray([0.9, 0.99, 0.999], F32)
RMS_DECAY = np.asarray([0.999], F32)
ADAFACTOR_DECAYS = np.asarray([0.9, 0.99, 0.999], F32)
FRACTION_TIMESCALES = np.asarray([0.03, 0.1, 0.2, 0.4, 0.6, 0.8, 0.9, 1.0, 1.1], F32)
GROUP_WIDTHS = (1, 1, 1, 3, 1, 3, 1, 3, 1, 3, 3, 3, 3, 3)


def _f32(x):
    return np.asarray(x, F32)


def _rsqrt(x):
    return (F32(1.0) / np.sqrt(_f32(x))).astype(F32)


# ------------------------------------------------------------------ §5.1 loss


@dataclasses.dataclass
class LossBuffer:
    means: np.ndarray
    running_min: np.ndarray
    decays: np.ndarray
    iteration: int


def init_loss_buffer(num_steps):
    e = F32(np.log(F32(num_steps))) / F32(np.log(10.0))
    i = np.arange(10, dtype=F32) / F32(9)
    lin = (F32(1) * (F32(1) - i) + e * i).astype(F32)
    lin[9] = e
    halflife = np.power(F32(10), lin).astype(F32)
    decays = np.exp(F32(-1) / halflife).astype(F32)
    return LossBuffer(np.zeros(10, F32), np.full(10, 999999999999.0, F32), decays, 0)


def _power(decays, k):
    """`d^k`, correctly rounded (float64, then float32), as the spec asks."""
    return (decays.astype(np.float64) ** k).astype(F32)


def update_loss_buffer(buffer, loss):
    loss = F32(loss)
    d, it = buffer.decays, buffer.iteration
    cm = buffer.means / (F32(1) - _power(d, it + 1))
    a = loss if it == 0 else F32(np.max(cm))
    clipped = F32(min(F32(2) * abs(a), loss))
    means = (d * buffer.means + (F32(1) - d) * clipped).astype(F32)
    cm = means / (F32(1) - _power(d, it + 1))
    return LossBuffer(means, np.minimum(buffer.running_min, cm).astype(F32), d, it + 1)


def loss_features(buffer):
    cm = buffer.means / (F32(1) - _power(buffer.decays, buffer.iteration))
    short, long, rmin = cm[:9], cm[1:], buffer.running_min[:9]
    den = np.maximum(F32(1e-8), long - rmin)
    f = np.clip((short - rmin) / den - F32(1), -1, 1).astype(F32)
    return f * F32(0) if buffer.iteration <= 2 else f


# ---------------------------------------------------------- §2 / §5.4 tensors


def factored_dims(shape):
    """`(d0, d1)`: the largest and second largest axes (stable), or None below rank 2."""
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda axis: shape[axis])  # sorted() is stable
    return order[-1], order[-2]


@dataclasses.dataclass
class TensorState:
    m: np.ndarray
    rms: np.ndarray
    v_row: np.ndarray
    v_col: np.ndarray
    v_diag: np.ndarray


def init_tensor_state(shape):
    shape = tuple(shape)
    dims = factored_dims(shape)
    empty = np.zeros((0, 3), F32)
    if dims is None:
        return TensorState(np.zeros(shape + (3,), F32), np.zeros(shape + (1,), F32),
                           empty, empty, np.zeros(shape + (3,), F32))
    d0, d1 = dims
    row = tuple(s for a, s in enumerate(shape) if a != d0) + (3,)
    col = tuple(s for a, s in enumerate(shape) if a != d1) + (3,)
    return TensorState(np.zeros(shape + (3,), F32), np.zeros(shape + (1,), F32),
                       np.zeros(row, F32), np.zeros(col, F32), empty)


def _cla(v):
    return F32(0.5) * np.clip(np.log(F32(1e-8) + np.abs(F32(10) * v)), -5, 5).astype(F32)


def lstm_features(p, state, fraction, loss_feats):
    """The 30 LSTM inputs of one tensor (§5.3, §5.4), from the old p, m, rms."""
    axes = tuple(range(p.ndim))
    nu = _rsqrt(max(F32(1e-9), F32(np.mean(np.square(p), dtype=F32))))
    m = nu * state.m
    r = nu * state.rms
    mu_m = np.mean(m, axis=axes, dtype=F32)
    var_m = np.mean(np.square(m - mu_m), axis=axes, dtype=F32)
    mu_r = np.mean(r, axis=axes, dtype=F32)
    var_r = np.mean(np.square(r - mu_m), axis=axes, dtype=F32)  # quirk: centred on mu_m
    rank = sum(1 for s in p.shape if s > 1)
    one_hot = np.zeros(5, F32)
    if rank < 5:
        one_hot[rank] = 1
    fraction_feats = np.tanh(F32(10) * (F32(fraction) - FRACTION_TIMESCALES)).astype(F32)
    return np.concatenate([fraction_feats, loss_feats, _cla(mu_r).reshape(1), one_hot,
                           _cla(var_m), _cla(var_r)]).astype(F32)


# ------------------------------------------------------------- §5.5, §5.7 net


def _dense(layer, x):
    return (x @ _f32(layer["w"]) + _f32(layer["b"])).astype(F32)


def _sigmoid(x):
    return (F32(1) / (F32(1) + np.exp(-x))).astype(F32)


def hypernetwork(rnn, features, hidden, cell):
    """`(controls [N,256], lr_mult [N], hidden', cell')` from `[N,30]` features."""
    pooled = np.max(np.maximum(_dense(rnn["linear_1"], features), 0), axis=0)
    x = _dense(rnn["linear_2"], features) + pooled[None]
    z = _dense(rnn["rnn/linear"], np.concatenate([x, hidden], axis=1))
    i, g, f, o = np.split(z, 4, axis=1)
    cell = _sigmoid(f + F32(1)) * cell + _sigmoid(i) * np.tanh(g)
    hidden = _sigmoid(o) * np.tanh(cell)
    return _dense(rnn["rnn_to_controls"], hidden), _dense(rnn["step_size"], hidden)[:, 0], \
        hidden.astype(F32), cell.astype(F32)


def mixed_mlp(stack, controls_row):
    """One tensor's MLP weights: `100 * mean_k(C_k theta_k)` (§5.7)."""
    k = controls_row.shape[0]

    def mix(array):
        array = _f32(array)
        return (F32(100) * np.tensordot(controls_row, array, axes=(0, 0)) / F32(k)).astype(F32)

    w0 = np.concatenate([mix(stack[f"w0__{i}"]) for i in range(14)], axis=0)
    return {"w0": w0, **{name: mix(stack[name]) for name in ("b0", "w1", "b1", "w2", "b2")}}


# ---------------------------------------------------- §5.6, §5.8-§5.10 params


def _expand(table, axis):
    """A reduced `[..., 3]` table with `axis` put back (size 1)."""
    return np.expand_dims(table, axis)


def tensor_step(p, g, state, weights, lr_mult):
    """`(new p, new TensorState)` for one tensor, given its mixed MLP and lr_mult."""
    shape = p.shape
    if p.ndim == 0:  # §5.8: rank 0 runs as shape (1,)
        new_p, new_state = tensor_step(p.reshape(1), g.reshape(1), _reshape_state(state, (1,)),
                                       weights, lr_mult)
        return new_p.reshape(()), _reshape_state(new_state, ())
    g3 = g[..., None]
    m = (MOMENTUM_DECAYS * state.m + (F32(1) - MOMENTUM_DECAYS) * g3).astype(F32)
    rms = (RMS_DECAY * state.rms + (F32(1) - RMS_DECAY) * np.square(g3)).astype(F32)
    q = (np.square(g) + F32(1e-30)).astype(F32)
    beta = ADAFACTOR_DECAYS
    dims = factored_dims(shape)
    if dims is not None:
        d0, d1 = dims
        v_row = (beta * state.v_row + (F32(1) - beta) * np.mean(q, axis=d0, dtype=F32)[..., None])
        v_col = (beta * state.v_col + (F32(1) - beta) * np.mean(q, axis=d1, dtype=F32)[..., None])
        v_row, v_col = v_row.astype(F32), v_col.astype(F32)
        row_axis = d1 if d1 < d0 else d1 - 1
        rho = np.mean(v_row, axis=row_axis, keepdims=True, dtype=F32)
        rowf = _rsqrt(np.maximum(v_row / (rho + F32(1e-9)), F32(1e-9)))
        colf = _rsqrt(np.maximum(v_col, F32(1e-9)))
        factor = _expand(rowf, d0) * _expand(colf, d1)
        fac_g = (g3 * factor).astype(F32)
        fac_mom = (m * factor).astype(F32)
        row_feat = np.broadcast_to(_expand(v_row, d0), shape + (3,))
        col_feat = np.broadcast_to(_expand(v_col, d1), shape + (3,))
        new_state = TensorState(m, rms, v_row, v_col, state.v_diag)
    else:
        v_diag = (beta * state.v_diag + (F32(1) - beta) * q[..., None]).astype(F32)
        fac_g = (g3 * _rsqrt(np.maximum(v_diag + F32(1e-9), F32(1e-9)))).astype(F32)
        fac_mom = (m * _rsqrt(v_diag)).astype(F32)  # no epsilon, as in the reference
        row_feat = col_feat = v_diag
        new_state = TensorState(m, rms, state.v_row, state.v_col, v_diag)
    s = _rsqrt(rms + F32(1e-6))
    groups = [g3, np.clip(g3, -0.1, 0.1), p[..., None], m, rms, m * s, s, fac_g, g3 * s,
              row_feat, col_feat, _rsqrt(row_feat + F32(1e-8)), _rsqrt(col_feat + F32(1e-8)),
              fac_mom]
    axes = tuple(range(p.ndim))
    normalised = [
        (x * _rsqrt(F32(1e-5) + np.mean(np.square(x), axis=axes, keepdims=True, dtype=F32)))
        .astype(F32)
        for x in groups
    ]
    assert [x.shape[-1] for x in normalised] == list(GROUP_WIDTHS)
    inputs = np.concatenate(normalised, axis=-1)
    h1 = np.maximum(inputs @ weights["w0"] + weights["b0"], 0).astype(F32)
    h2 = np.maximum(h1 @ weights["w1"] + weights["b1"], 0).astype(F32)
    out = (h2 @ weights["w2"] + weights["b2"]).astype(F32)
    direction, magnitude = out[..., 0], out[..., 1]
    scale = np.sqrt(np.mean(np.square(p), dtype=F32) + F32(1e-9)).astype(F32)
    step = F32(lr_mult) * (direction * (scale * np.exp(F32(0.001) * magnitude)) * F32(0.001))
    new_p = (p - step.astype(F32)).astype(F32)
    return (p + (new_p - p)).astype(F32), new_state  # the optax round trip (§6)


def _reshape_state(state, shape):
    shape = tuple(shape)
    return TensorState(state.m.reshape(shape + (3,)), state.rms.reshape(shape + (1,)),
                       state.v_row, state.v_col, state.v_diag.reshape(shape + (3,)))


# ------------------------------------------------------------------ §4 update


@dataclasses.dataclass
class State:
    iteration: int
    num_steps: int
    loss_buffer: LossBuffer
    tensors: list
    lstm_hidden: np.ndarray
    lstm_cell: np.ndarray


def init_state(theta, shapes, num_steps):
    init = theta["lstm_init_state"]
    n = len(shapes)
    return State(0, int(num_steps), init_loss_buffer(num_steps),
                 [init_tensor_state(s) for s in shapes],
                 np.tile(_f32(init["hidden"]).reshape(1, -1), (n, 1)),
                 np.tile(_f32(init["cell"]).reshape(1, -1), (n, 1)))


def update(theta, state, params, grads, loss, weight_decay=0.0):
    """One reference update (§4; with §6's coupled weight decay): `(new params, new State)`."""
    params = [_f32(p) for p in params]
    grads = [_f32(g) for g in grads]
    if weight_decay:
        wd = F32(weight_decay)
        loss = F32(loss) + wd * F32(sum(np.sum(np.square(p), dtype=F32) for p in params))
        grads = [(g + wd * p).astype(F32) for g, p in zip(grads, params)]
    buffer = update_loss_buffer(state.loss_buffer, loss)
    loss_feats = loss_features(buffer)
    grads = [np.clip(g, -1000, 1000).astype(F32) for g in grads]
    fraction = F32(state.iteration) / F32(state.num_steps)
    features = np.stack([lstm_features(p, t, fraction, loss_feats)
                         for p, t in zip(params, state.tensors)])
    controls, lr_mult, hidden, cell = hypernetwork(
        theta["rnn_params"], features, state.lstm_hidden, state.lstm_cell)
    stack = theta["ff_mod_stack"]["~"]
    new_params, new_tensors = [], []
    for j, (p, g, t) in enumerate(zip(params, grads, state.tensors)):
        new_p, new_t = tensor_step(p, g, t, mixed_mlp(stack, controls[j]), lr_mult[j])
        new_params.append(new_p)
        new_tensors.append(new_t)
    new_state = State(state.iteration + 1, state.num_steps, buffer, new_tensors, hidden, cell)
    return new_params, new_state
