"""VeLO's per-tensor hypernetwork: mix layers, LSTM, heads, MLP weight mixing.

Spec: `shared/spec/velo_reference.md` §5.5 and §5.7 (reference:
`research/general_lopt/hyper_v2.py`, haiku's `LSTM`).

All tensors of a model go through in one batch of N rows: the max over rows
in `mix_tensor_features` is VeLO's only interaction between tensors.
Dense layers compute `x @ w + b` with `w` laid out `[in, out]`.
"""

from keras import ops

from keras_velo.maths.theta import (
    MLP_HIDDEN_SIZE,
    MLP_INPUT_GROUP_WIDTHS,
    MLP_OUTPUT_SIZE,
)

LSTM_FORGET_BIAS = 1.0
MLP_WEIGHT_MIX_SCALE = 100.0


def _dense(layer, inputs):
    return ops.matmul(inputs, layer["w"]) + layer["b"]


def mix_tensor_features(rnn_params, features, active=None):
    """`[N, 30] -> [N, H]`: `X W2 + b2 + max_rows(relu(X W1 + b1))`.

    `active` (optional static `[N]` bools) leaves rows out of the max, as if
    those tensors were not there (the relu makes every row's values >= 0).

    Quirk: the reference also computes `relu(X W + b)` with `linear`, then
    overwrites it; that dead layer is loaded with theta but never evaluated.
    """
    mixed = ops.relu(_dense(rnn_params["linear_1"], features))
    if active is not None:
        mixed = ops.where(ops.convert_to_tensor(active)[:, None], mixed, 0.0)
    pooled = ops.max(mixed, axis=0)
    return _dense(rnn_params["linear_2"], features) + pooled[None]


def lstm_step(rnn_params, inputs, hidden, cell):
    """One haiku-convention LSTM step, `[N, H]` each; returns `(hidden', cell')`.

    Gates `[x, h] W + b` split as (input, candidate, forget, output); the
    forget gate gets `+1` at run time: `c' = s(f+1) c + s(i) tanh(g)`,
    `h' = s(o) tanh(c')`.
    """
    gates = _dense(rnn_params["rnn/linear"], ops.concatenate([inputs, hidden], axis=1))
    input_gate, candidate, forget_gate, output_gate = ops.split(gates, 4, axis=1)
    new_cell = ops.sigmoid(forget_gate + LSTM_FORGET_BIAS) * cell + ops.sigmoid(
        input_gate
    ) * ops.tanh(candidate)
    new_hidden = ops.sigmoid(output_gate) * ops.tanh(new_cell)
    return new_hidden, new_cell


def control_heads(rnn_params, hidden):
    """`[N, H] -> (controls [N, K], lr_mult [N])`; lr_mult is linear (may be < 0)."""
    controls = _dense(rnn_params["rnn_to_controls"], hidden)
    lr_mult = _dense(rnn_params["step_size"], hidden)[:, 0]
    return controls, lr_mult


def mlp_weight_bank(mlp_stack):
    """The K stored MLPs flattened into one `[K, 159]` matrix (numpy or tensor).

    Column order: w0 `[30, 4]` (the 14 input groups stacked), b0 `[4]`,
    w1 `[4, 4]`, b1 `[4]`, w2 `[4, 3]`, b2 `[3]`, each flattened row-major.
    """
    first_layer = ops.concatenate(
        [mlp_stack[f"w0__{i}"] for i in range(len(MLP_INPUT_GROUP_WIDTHS))], axis=1
    )
    pieces = [first_layer, mlp_stack["b0"], mlp_stack["w1"], mlp_stack["b1"]]
    pieces += [mlp_stack["w2"], mlp_stack["b2"]]
    num_sets = first_layer.shape[0]
    return ops.concatenate([ops.reshape(x, (num_sets, -1)) for x in pieces], axis=1)


def mix_mlp_weights(mlp_stack, controls):
    """Per-tensor MLP weights, `100 * mean_k(controls[:, k] * theta_k)`.

    Returns a dict of batched arrays: `w0 [N, 30, 4]`, `b0 [N, 4]`,
    `w1 [N, 4, 4]`, `b1 [N, 4]`, `w2 [N, 4, 3]`, `b2 [N, 3]`.
    """
    bank = mlp_weight_bank(mlp_stack)
    num_sets = bank.shape[0]
    mixed = ops.matmul(controls, bank) * (MLP_WEIGHT_MIX_SCALE / num_sets)
    num_inputs, hidden, out = sum(MLP_INPUT_GROUP_WIDTHS), MLP_HIDDEN_SIZE, MLP_OUTPUT_SIZE
    shapes = {
        "w0": (num_inputs, hidden),
        "b0": (hidden,),
        "w1": (hidden, hidden),
        "b1": (hidden,),
        "w2": (hidden, out),
        "b2": (out,),
    }
    weights, start = {}, 0
    for name, shape in shapes.items():
        size = 1
        for s in shape:
            size *= s
        weights[name] = ops.reshape(mixed[:, start : start + size], (-1,) + shape)
        start += size
    return weights
