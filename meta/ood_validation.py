"""`ood-valid-v1`: held-out tasks from architectures and data meta-training never samples.

`cpu-valid-v1` is drawn from the meta-training distribution itself, so it
says whether a theta fits that distribution. This set says whether it
generalises: every task differs from anything a member can draw in at
least one way, marked in its comment: depths, widths or sequence lengths
outside the samplers' ranges, activations no sampler draws (`leaky_relu`,
`softplus`), normalisation placements a family does not sample, data sets
no family samples (`iris`, `friedman2`), and horizons of 300-2,000 steps,
longer than `cpu-valid-v1`'s 100-500. Three mirror the models a new user
tried first and saw VeLO lose on: a GPT-2-style character LM, a ViT on
Fashion-MNIST and a small residual convnet with BatchNorm inside its two
branches and none before the head (at widths no sampler draws).

The tasks are fixed (the name carries the version); each has an Adam(1e-3)
reference run committed in `meta/references/`.
"""

from meta.validation import FixedValidationSet, ValidationTask


def _task(name, config, horizon, data_seed):
    return ValidationTask(name=name, config=config, horizon=horizon, data_seed=data_seed)


OOD_TASKS = (
    # The user's residual convnet: BatchNorm inside both branches, none before
    # the head, 8x8 digits (width 12: residual_net samples 8/16/32).
    _task("residual-user", {"family": "residual_net", "dataset": "digits", "batch_size": 32,
                            "init_seed": 7, "image_size": 8, "width": 12, "num_blocks": 2,
                            "downsample": False, "post_activation": False, "activation": "relu",
                            "initializer": "he_normal", "normalization": "batch",
                            "loss": "cross_entropy"}, 340, 11),
    # 20 blocks (residual_net samples 2-16), leaky_relu.
    _task("residual-deep", {"family": "residual_net", "dataset": "fashion_mnist", "batch_size": 32,
                            "init_seed": 8, "image_size": 8, "width": 12, "num_blocks": 20,
                            "downsample": False, "post_activation": True,
                            "activation": "leaky_relu", "initializer": "he_normal",
                            "normalization": "batch", "loss": "cross_entropy"}, 600, 12),
    # Pre-activation ResNet with softplus and base width 12 (resnet samples 8/16/32).
    _task("resnet-softplus", {"family": "resnet", "dataset": "digits", "batch_size": 32,
                              "init_seed": 9, "image_size": 8, "padding": 0, "base_width": 12,
                              "num_stages": 2, "blocks_per_stage": 2, "activation": "softplus",
                              "initializer": "he_normal", "normalization": "batch",
                              "loss": "cross_entropy"}, 500, 13),
    # The user's ViT: pre-norm, 3 layers, patch 7 on 28 px; width 48 (vit samples 32/64).
    _task("vit-user", {"family": "vit", "dataset": "fashion_mnist", "batch_size": 64, "init_seed": 10,
                       "image_size": 28, "patch_size": 7, "model_dim": 48, "num_heads": 3,
                       "num_layers": 3, "mlp_ratio": 2, "norm_position": "pre",
                       "pool": "class_token", "activation": "gelu", "initializer": "glorot_uniform",
                       "loss": "cross_entropy"}, 380, 14),
    # Post-norm, 6 layers (vit samples 1-4), mean pool.
    _task("vit-post-deep", {"family": "vit", "dataset": "fashion_mnist", "batch_size": 32,
                            "init_seed": 11, "image_size": 16, "patch_size": 4, "model_dim": 32,
                            "num_heads": 2, "num_layers": 6, "mlp_ratio": 2, "norm_position": "post",
                            "pool": "mean", "activation": "gelu", "initializer": "glorot_uniform",
                            "loss": "cross_entropy"}, 800, 15),
    # The user's GPT-2: pre-norm, 2 layers, width 80 (gpt_lm samples 32/48/64/96).
    _task("gpt-user", {"family": "gpt_lm", "dataset": "python_stdlib", "batch_size": 16,
                       "init_seed": 12, "sequence_length": 64, "model_dim": 80, "num_heads": 2,
                       "num_layers": 2, "mlp_ratio": 4, "activation": "gelu",
                       "initializer": "glorot_uniform", "norm_position": "pre"}, 1000, 16),
    # Post-norm, 6 layers (gpt_lm samples 1-4), sequence 48.
    _task("gpt-post-deep", {"family": "gpt_lm", "dataset": "python_stdlib", "batch_size": 16,
                            "init_seed": 13, "sequence_length": 48, "model_dim": 40, "num_heads": 2,
                            "num_layers": 6, "mlp_ratio": 2, "activation": "gelu",
                            "initializer": "glorot_uniform", "norm_position": "post"}, 600, 17),
    # A GRU of width 48 on sequences of 48 (rnn_lm samples 32-256 / 32, 64).
    _task("gru-48", {"family": "rnn_lm", "dataset": "python_stdlib", "batch_size": 32, "init_seed": 14,
                     "sequence_length": 48, "cell": "gru", "embedding_dim": 24, "hidden_sizes": [48],
                     "initializer": "glorot_uniform"}, 800, 18),
    # Five layers of 96 (image_mlp samples 1-3 layers of 32-256 in powers of 2), leaky_relu.
    _task("mlp-deep-leaky", {"family": "image_mlp", "dataset": "fashion_mnist", "batch_size": 64,
                             "init_seed": 15, "image_size": 16, "hidden_sizes": [96] * 5,
                             "activation": "leaky_relu", "initializer": "he_normal",
                             "normalization": "layer", "loss": "cross_entropy"}, 1500, 19),
    _task("mlp-mnist1d-softplus", {"family": "image_mlp", "dataset": "mnist1d", "batch_size": 32,
                                   "init_seed": 16, "image_size": None, "hidden_sizes": [48] * 4,
                                   "activation": "softplus", "initializer": "lecun_normal",
                                   "normalization": "none", "loss": "cross_entropy"}, 2000, 20),
    # Kernel 7 and 12/24 channels (image_cnn samples kernels 3/5, 8-64 in powers of 2).
    _task("cnn-kernel7", {"family": "image_cnn", "dataset": "fashion_mnist", "batch_size": 32,
                          "init_seed": 17, "image_size": 16, "channels": 1, "padding": 0,
                          "conv_channels": [12, 24], "kernel_size": 7, "pooling": "average",
                          "activation": "leaky_relu", "initializer": "he_normal",
                          "normalization": "batch", "loss": "cross_entropy"}, 600, 21),
    # Three encoder layers (the autoencoder samples 1-2), softplus.
    _task("ae-deep-softplus", {"family": "autoencoder", "dataset": "fashion_mnist", "batch_size": 64,
                               "init_seed": 18, "image_size": 16, "encoder_sizes": [192, 96, 48],
                               "bottleneck": 12, "activation": "softplus",
                               "initializer": "glorot_uniform", "loss": "squared_error"}, 1500, 22),
    _task("vae-leaky", {"family": "vae", "dataset": "digits", "batch_size": 32, "init_seed": 19,
                        "image_size": 8, "encoder_sizes": [96, 48], "latent_dim": 6,
                        "activation": "leaky_relu", "initializer": "glorot_uniform"}, 1200, 23),
    # Tables no family samples.
    _task("iris-mlp", {"family": "tabular", "dataset": "iris", "batch_size": 16, "init_seed": 20,
                       "hidden_sizes": [24, 24, 24], "activation": "softplus",
                       "initializer": "glorot_uniform", "normalization": "none"}, 500, 24),
    _task("friedman2-regression", {"family": "tabular", "dataset": "friedman2", "batch_size": 32,
                                   "init_seed": 21, "hidden_sizes": [64, 64], "activation": "leaky_relu",
                                   "initializer": "he_normal", "normalization": "batch"}, 1000, 25),
)

OOD_VALIDATION = FixedValidationSet("ood-valid-v1", OOD_TASKS)
