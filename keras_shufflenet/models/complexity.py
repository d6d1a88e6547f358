"""Complexity accounting in the paper's unit: FLOPs are multiply-adds.

Reference:
    Table 1 caption: "The complexity is evaluated with FLOPs, i.e. the
    number of floating-point multiplication-adds."
"""

import math

import keras

from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.layers import iter_layers
from keras_shufflenet.models.shufflenet import ShuffleNet


def _spatial(shape, data_format):
    dims = shape[1:-1] if data_format == "channels_last" else shape[2:]
    if any(d is None for d in dims):
        return None
    return math.prod(dims)


def layer_flops(layer):
    """Multiply-adds of one layer for one example, or 0 if it has none.

    Counts convolutions (grouped and depthwise too) and dense layers, as the
    paper does; batch norm, activations, pooling and additions are free.

    Args:
        layer: A built Keras layer with a single inbound node.

    Returns:
        An int.
    """
    if isinstance(layer, keras.layers.Dense):
        return layer.kernel.shape[0] * layer.kernel.shape[1]
    if not isinstance(
        layer,
        (
            keras.layers.Conv2D,
            keras.layers.DepthwiseConv2D,
            keras.layers.SeparableConv2D,
            PointwiseGroupConv2D,
        ),
    ):
        return 0
    out_shape = layer.output.shape
    spatial = _spatial(out_shape, layer.data_format)
    if spatial is None:
        raise ValueError(
            f"Layer {layer.name!r} has a dynamic output shape {out_shape}; "
            "pass `input_shape` to `complexity` to count its FLOPs."
        )
    if isinstance(layer, keras.layers.SeparableConv2D):
        kh, kw, cin, mult = layer.depthwise_kernel.shape
        return spatial * (kh * kw * cin * mult + math.prod(
            layer.pointwise_kernel.shape
        ))
    # Every kernel here is (kh, kw, in_per_group, out) or, for depthwise,
    # (kh, kw, in, multiplier): one multiply-add per entry per position.
    return spatial * math.prod(layer.kernel.shape)


def complexity(model, input_shape=None):
    """Returns the paper's complexity figures of a model.

    Reference:
        Table 1 (complexity column), Table 2 and Table 5 (MFLOPs).

    Args:
        model: A functional Keras model, such as `ShuffleNet(...)`.
        input_shape: Optional `(height, width, channels)` at which to count,
            required when the model's input size is dynamic. Defaults to the
            model's own input shape.

    Returns:
        A dict: `"flops"`, multiply-adds of the convolution, depthwise and
        dense layers for one image; `"params"`, the number of learned
        parameters, as the official release and PyTorch count them: every
        weight except batch norm's moving statistics.
    """
    counted = model
    if input_shape is not None:
        inputs = keras.Input(shape=tuple(input_shape))
        counted = keras.models.clone_model(model, input_tensors=inputs)
    flops = sum(layer_flops(layer) for layer in iter_layers(counted))
    moving_stats = sum(
        math.prod(layer.moving_mean.shape) + math.prod(
            layer.moving_variance.shape
        )
        for layer in iter_layers(model)
        if isinstance(layer, keras.layers.BatchNormalization)
    )
    params = model.count_params() - moving_stats
    return {"flops": int(flops), "params": int(params)}


# The paper's complexity figures in MFLOPs, keyed by
# (scale, groups, se, shallow).
PAPER_MFLOPS = {
    # Table 1 (1x, every group count).
    (1.0, 1, False, False): 143,
    (1.0, 2, False, False): 140,
    (1.0, 3, False, False): 137,
    (1.0, 4, False, False): 133,
    (1.0, 8, False, False): 137,
    # Table 5.
    (1.5, 3, False, False): 292,
    (2.0, 3, False, False): 524,
    (2.0, 3, True, False): 527,
    (0.5, 4, False, False): 38,
    (0.5, 3, False, True): 40,
}


# Table 2 gives one complexity per width for all group counts.
PAPER_MFLOPS_BY_SCALE = {1.0: 140, 0.5: 38, 0.25: 13}

# (MFLOPs, parameters in millions) of the official release's models, from
# its results table (megvii-model/ShuffleNet-Series, ShuffleNetV1).
OFFICIAL_COMPLEXITY = {
    (0.5, 3): (38, 0.7), (1.0, 3): (138, 1.9),
    (1.5, 3): (292, 3.4), (2.0, 3): (524, 5.4),
    (0.5, 8): (40, 1.0), (1.0, 8): (138, 2.4),
    (1.5, 8): (290, 4.3), (2.0, 8): (522, 6.5),
}


def paper_mflops(scale, groups, se=False, shallow=False):
    """The paper's MFLOPs for a variant, or None where it gives none.

    Reference:
        Tables 1, 2 and 5.
    """
    key = (float(scale), groups, se, shallow)
    if key in PAPER_MFLOPS:
        return PAPER_MFLOPS[key]
    if not se and not shallow:
        return PAPER_MFLOPS_BY_SCALE.get(float(scale))
    return None


def complexity_table(
    scales=(0.25, 0.5, 1.0, 1.5, 2.0),
    groups=(1, 2, 3, 4, 8),
    input_size=224,
    progress=None,
):
    """Measures every variant beside the paper's and the release's figures.

    Rows cover scale x groups, each plain and with SE, and the shallow
    variant of every scale for 3 and 8 groups.

    Reference:
        Tables 1, 2 and 5; the official release's parameter counts.

    Args:
        scales: Width multipliers. Defaults to the paper's five.
        groups: Group counts. Defaults to Table 1's five.
        input_size: Square input size. Defaults to 224.
        progress: Optional callable given each row as it is measured.

    Returns:
        A list of dicts with keys `scale, groups, se, shallow, mflops,
        paper_mflops, mflops_diff_pct, official_mflops, mparams,
        official_mparams`.
    """
    variants = [(s, g, se, False) for s in scales for g in groups
                for se in (False, True)]
    variants += [(s, g, False, True) for s in scales for g in groups
                 if g in (3, 8)]
    rows = []
    for scale, g, se, shallow in variants:
        model = ShuffleNet(
            scale, g, se, shallow=shallow,
            input_shape=(input_size, input_size, 3),
        )
        measured = complexity(model)
        keras.backend.clear_session()
        paper = paper_mflops(scale, g, se, shallow)
        mflops = measured["flops"] / 1e6
        official = (None, None)
        if not se and not shallow:
            official = OFFICIAL_COMPLEXITY.get((float(scale), g), official)
        row = {
            "scale": scale,
            "groups": g,
            "se": se,
            "shallow": shallow,
            "mflops": round(mflops, 1),
            "paper_mflops": paper,
            "mflops_diff_pct": (
                None if paper is None else round(100 * (mflops / paper - 1), 1)
            ),
            "official_mflops": official[0],
            "mparams": round(measured["params"] / 1e6, 2),
            "official_mparams": official[1],
        }
        rows.append(row)
        if progress is not None:
            progress(row)
    return rows


def format_table(rows):
    """Formats `complexity_table` rows as a markdown table."""

    def cell(value, fmt="{}"):
        return "" if value is None else fmt.format(value)

    lines = [
        "| model | MFLOPs | paper MFLOPs | diff | official MFLOPs "
        "| params (M) | official params (M) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        name = f"ShuffleNet {r['scale']:g}x (g={r['groups']})"
        name += " shallow" * r["shallow"] + " + SE" * r["se"]
        lines.append(
            f"| {name} | {r['mflops']:.1f} | {cell(r['paper_mflops'])} | "
            f"{cell(r['mflops_diff_pct'], '{:+.1f}%')} | "
            f"{cell(r['official_mflops'])} | {r['mparams']:.2f} | "
            f"{cell(r['official_mparams'])} |"
        )
    return "\n".join(lines)
