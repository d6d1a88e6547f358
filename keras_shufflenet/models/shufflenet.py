"""The ShuffleNet v1 model family (Zhang et al., 2017) as functional Keras 3
models, exact to Table 1 of the paper and to the official release's layout.

Reference:
    Zhang, Zhou, Lin, Sun, "ShuffleNet: An Extremely Efficient Convolutional
    Neural Network for Mobile Devices", CVPR 2018. Section 3 and Table 1.
"""

import functools
import math
import warnings

import keras
from keras import layers

from keras_shufflenet.models.checks import check_arguments
from keras_shufflenet.models.checks import check_input_shape
from keras_shufflenet.models.checks import check_pretrained_variant
from keras_shufflenet.models.checks import check_scale_groups
from keras_shufflenet.models.checks import check_stem_width
from keras_shufflenet.models.layers import ChannelShuffle
from keras_shufflenet.models.layers import PointwiseGroupConv2D
from keras_shufflenet.models.layers import channel_axis
from keras_shufflenet.models.loading import load_weights
from keras_shufflenet.models.lowering import DeferredChannelShuffle
from keras_shufflenet.models.lowering import DepthwiseAveragePooling2D
from keras_shufflenet.models.lowering import ImageNormalization
from keras_shufflenet.models.lowering import PermutedDepthwiseConv2D
from keras_shufflenet.models.lowering import RowZeroPadding2D
from keras_shufflenet.models.lowering import ShufflingBatchNormalization
from keras_shufflenet.models.naming import variant_name
from keras_shufflenet.models.parts import layer_name
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.models.pretrained import WeightsPlan
from keras_shufflenet.models.pretrained import architecture_options
from keras_shufflenet.models.pretrained import plan_weights
from keras_shufflenet.utils.onednn import tensorflow_runs_nchw_conv

# Table 1: output channels of stages 2, 3 and 4 of "ShuffleNet 1x" for each
# number of groups g. Every stage doubles the previous one.
STAGE2_WIDTHS = {1: 144, 2: 200, 3: 240, 4: 272, 8: 384}
STEM_WIDTH = 24
# Table 1: units per stage; the first unit of each stage has stride 2.
STAGE_REPEATS = (4, 8, 4)
# Table 5, "0.5x shallow": half the units of stages 2 to 4 (26 layers).
SHALLOW_STAGE_REPEATS = (2, 4, 2)
# Section 3.3: bottleneck channels are 1/4 of a unit's output channels.
BOTTLENECK_RATIO = 4
# Table 5, "with SE": squeeze-and-excitation (Hu et al.) with reduction 16.
SE_REDUCTION = 16
# The official release's BatchNorm2d defaults (eps 1e-5, momentum 0.1).
BN_EPSILON = 1e-5
BN_MOMENTUM = 0.9
# ImageNet statistics, in [0, 1] RGB, applied inside the graph.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# The widths [conv1, stage2, stage3, stage4] of the official release
# (megvii-model/ShuffleNet-Series, ShuffleNetV1). `shufflenet_widths`
# reproduces all of them; the table is kept to test that it does.
OFFICIAL_WIDTHS = {
    (0.5, 3): (12, 120, 240, 480),
    (1.0, 3): (24, 240, 480, 960),
    (1.5, 3): (24, 360, 720, 1440),
    (2.0, 3): (48, 480, 960, 1920),
    (0.5, 8): (16, 192, 384, 768),
    (1.0, 8): (24, 384, 768, 1536),
    (1.5, 8): (24, 576, 1152, 2304),
    (2.0, 8): (48, 768, 1536, 3072),
}


def round_to_multiple(value, multiple):
    """Rounds to the nearest multiple (halves up), and to at least one."""
    return max(multiple, int(math.floor(value / multiple + 0.5)) * multiple)


def shufflenet_widths(scale, groups, stem_width=None):
    """Returns the output widths `(conv1, stage2, stage3, stage4)`.

    One rule for every positive `scale`: each width is Table 1's 1x width
    times `scale`, rounded to the nearest multiple of `groups` (halves up,
    at least `groups`); stages 3 and 4 double stage 2 (section 3.3). Every
    grouped width, including the first unit's branch (stage 2 minus conv1)
    and the bottlenecks (`bottleneck_width`), then divides into `groups`.

    conv1 scales by the largest power of two not above `scale`, the
    official release's choice (its 1.5x models keep the 1x stem of 24), but
    by no less than 1/2: at 0.25x a 12-channel stem gives Table 2's 13
    MFLOPs for 1 to 4 groups, where a 6-channel one gives 11. The stem
    always stays narrower than stage 2, so the first unit's branch exists.
    The rule reproduces Table 1 and the release's eight configurations
    (0.5x, 1x, 1.5x and 2x with 3 and 8 groups; `OFFICIAL_WIDTHS`).

    Reference:
        Table 1 and section 3.3 ("ShuffleNet s x" scales the channels by s).

    Args:
        scale: Width multiplier `s`, a positive number.
        groups: Number of groups: 1, 2, 3, 4 or 8.
        stem_width: conv1's width instead of the rule's, e.g. pytorchcv's
            `int(24 * scale)`. Defaults to None (the rule).

    Returns:
        A tuple of four ints.

    Raises:
        ValueError: A bad argument; a `stem_width` that leaves the first
            unit's branch (stage 2 minus conv1) no channels or channels
            not divisible by `groups`.
    """
    check_scale_groups(scale, groups)
    stage2 = max(
        2 * groups, round_to_multiple(STAGE2_WIDTHS[groups] * scale, groups)
    )
    if stem_width is None:
        stem_scale = max(0.5, 2.0 ** math.floor(math.log2(scale)))
        stem = round_to_multiple(STEM_WIDTH * stem_scale, groups)
        stem = min(stem, stage2 - groups)
    else:
        check_stem_width(stem_width, stage2, groups)
        stem = stem_width
    return (stem, stage2, 2 * stage2, 4 * stage2)


def bottleneck_width(out_channels, groups, multiple=1):
    """A quarter of a unit's width (section 3.3), kept divisible by groups.

    Exactly `out_channels / 4` for Table 1 and the official widths; other
    widths round to the nearest multiple of `groups`, halves up (0.5x with
    g=4: 136 / 4 = 34 becomes 36). `multiple` > 1 rounds each group's
    bottleneck channels to a multiple of it instead (an opt-in, not the
    paper's width).
    """
    return round_to_multiple(
        out_channels / BOTTLENECK_RATIO, groups * multiple
    )




def backend_runs_channels_first_conv():
    """Whether the Keras backend runs NCHW (`channels_first`) convolutions.

    JAX and torch always do. TensorFlow does on a GPU, but on a CPU only
    when oneDNN is on, which TensorFlow decides by itself from the CPU
    unless `TF_ENABLE_ONEDNN_OPTS` says otherwise; so this is probed once
    with a 1x1 convolution rather than guessed.

    Returns:
        A bool.
    """
    if keras.backend.backend() != "tensorflow":
        return True
    return tensorflow_runs_nchw_conv()


def _warn_if_channels_first_cannot_run():
    if keras.config.image_data_format() == "channels_last":
        return
    if backend_runs_channels_first_conv():
        return
    warnings.warn(
        "ShuffleNet: keras.config.image_data_format() is 'channels_first', "
        "but TensorFlow cannot run NCHW convolutions on this CPU (oneDNN is "
        "off), so the model's keras.layers.Conv2D layers will fail when "
        "called. Build it with 'channels_last' (the weights are the "
        "same in both layouts), set TF_ENABLE_ONEDNN_OPTS=1, or run it on a "
        "GPU or on the JAX or torch backend.",
        stacklevel=3,
    )


def _pad(x, name):
    # PyTorch pads stride-2 ops by 1 on every side; TF's "same" pads (0, 1).
    return layers.ZeroPadding2D(1, name=name)(x)


def _batch_norm(x, name, deferred_shuffle=None):
    if deferred_shuffle:
        norm = functools.partial(
            ShufflingBatchNormalization, **deferred_shuffle
        )
    else:
        norm = layers.BatchNormalization
    return norm(
        axis=channel_axis(),
        epsilon=BN_EPSILON,
        momentum=BN_MOMENTUM,
        name=name,
    )(x)


def _pointwise(x, filters, groups, implementation, name):
    if groups == 1:
        return layers.Conv2D(
            filters, 1, use_bias=False, kernel_initializer="he_normal",
            name=name,
        )(x)
    return PointwiseGroupConv2D(
        filters, groups, implementation=implementation, name=name
    )(x)


def _squeeze_excite(x, name):
    channels = x.shape[channel_axis()]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=name("se_squeeze"))(
        x
    )
    s = layers.Conv2D(
        max(1, channels // SE_REDUCTION), 1, activation="relu",
        name=name("se_reduce"),
    )(s)
    s = layers.Conv2D(
        channels, 1, activation="sigmoid", name=name("se_expand")
    )(s)
    return layers.Multiply(name=name("se_excite"))([x, s])


def shufflenet_unit(
    x,
    out_channels,
    groups,
    stride,
    *,
    group_first_conv=True,
    se=False,
    shuffle=True,
    shuffle_order="paper",
    implementation="split",
    bottleneck_multiple=1,
    concat_order="shortcut_first",
    stage,
    index,
):
    """One ShuffleNet unit, Figure 2 (b) for stride 1 and (c) for stride 2.

    Branch: 1x1 group conv, BN, ReLU, channel shuffle, 3x3 depthwise conv,
    BN (no ReLU), 1x1 group conv, BN, and optionally squeeze-and-excitation.
    Stride 1 adds the identity, then ReLU. Stride 2 concatenates
    `[3x3/2 average-pooled shortcut, ReLU(branch)]`, the official release's
    order (or the branch first); the branch produces `out_channels -
    in_channels` channels. The
    paper's ReLU after the concatenation is applied to the branch alone:
    the shortcut pools a ReLU output, so it is already non-negative and the
    two forms compute the same function, with one op fewer on device.

    Reference:
        Section 3.2 and Figure 2; Table 1 for the bottleneck ratio of 1/4.

    Args:
        x: Input tensor (non-negative, as every unit's output is).
        out_channels: Output channels of the unit.
        groups: Number of groups of the pointwise convolutions.
        stride: 1 or 2.
        group_first_conv: Whether the first pointwise conv is grouped. Table 1
            does not group it in the first unit of stage 2.
        se: Whether to add squeeze-and-excitation to the branch (Table 5).
        shuffle: Whether to shuffle channels (Table 3's ablation turns it
            off). With `groups=1` there is nothing to shuffle.
        shuffle_order: `"paper"` or `"official"`, see `ChannelShuffle`.
        implementation: The `PointwiseGroupConv2D` lowering.
        bottleneck_multiple: Rounds each group's bottleneck channels to a
            multiple of this (see `ShuffleNet`). Defaults to 1.
        concat_order: A stride-2 unit's concatenation: `"shortcut_first"`
            or `"branch_first"`. Defaults to `"shortcut_first"`.
        stage: The unit's stage (2, 3 or 4 in Table 1).
        index: The unit's position in its stage, from 1. With `stage`, it
            names the unit's layers (`parts.layer_name`).

    Returns:
        The unit's output tensor.
    """
    axis = channel_axis()

    def name(role):
        return layer_name(role, stage, index)

    in_channels = x.shape[axis]
    branch_channels = out_channels - in_channels if stride == 2 else out_channels
    bottleneck = bottleneck_width(out_channels, groups, bottleneck_multiple)

    y = _pointwise(
        x, bottleneck, groups if group_first_conv else 1, implementation,
        name("gconv1"),
    )
    y = _batch_norm(y, name("gconv1_bn"))
    y = layers.ReLU(name=name("gconv1_relu"))(y)
    # In a stride-2 unit the shuffle runs after the depthwise conv and its
    # batch norm at inference, on a 4 times smaller tensor (see
    # `DeferredChannelShuffle`); the weights are the same.
    shuffled = shuffle and groups > 1
    deferred = (
        dict(shuffle_groups=groups, shuffle_order=shuffle_order)
        if shuffled and stride == 2
        else None
    )
    if shuffled:
        shuffle_class = DeferredChannelShuffle if deferred else ChannelShuffle
        y = shuffle_class(
            groups, order=shuffle_order, name=name("shuffle")
        )(y)
    if stride == 2:
        y = _pad(y, name("dwconv_pad"))
    dwconv = (
        functools.partial(PermutedDepthwiseConv2D, **deferred)
        if deferred
        else layers.DepthwiseConv2D
    )
    y = dwconv(
        3,
        strides=stride,
        padding="valid" if stride == 2 else "same",
        use_bias=False,
        name=name("dwconv"),
    )(y)
    y = _batch_norm(y, name("dwconv_bn"), deferred)
    y = _pointwise(y, branch_channels, groups, implementation, name("gconv2"))
    y = _batch_norm(y, name("gconv2_bn"))
    if se:
        y = _squeeze_excite(y, name)
    if stride == 1:
        y = layers.Add(name=name("add"))([x, y])
        return layers.ReLU(name=name("relu"))(y)
    y = layers.ReLU(name=name("branch_relu"))(y)
    # count_include_pad=True in PyTorch: the padded zeros count.
    shortcut = _pad(x, name("shortcut_pad"))
    shortcut = DepthwiseAveragePooling2D(3, 2, name=name("shortcut_pool"))(
        shortcut
    )
    pieces = [shortcut, y] if concat_order == "shortcut_first" else [
        y, shortcut
    ]
    return layers.Concatenate(axis=axis, name=name("concat"))(pieces)


def preprocess_input(x):
    """Normalises RGB pixel values in [0, 255] with ImageNet statistics.

    Use it with `include_preprocessing=False`; with the default
    `include_preprocessing=True` the model does this itself.

    Args:
        x: Array or tensor of RGB pixel values in [0, 255], channels last
            or first as `keras.config.image_data_format()` says.

    Returns:
        A float32 tensor, `(x / 255 - mean) / std` per channel.
    """
    x = keras.ops.cast(x, "float32")
    shape = (3,) if channel_axis() == -1 else (3, 1, 1)
    mean = keras.ops.reshape(
        keras.ops.array([255 * m for m in IMAGENET_MEAN]), shape
    )
    std = keras.ops.reshape(
        keras.ops.array([255 * s for s in IMAGENET_STD]), shape
    )
    return (x - mean) / std


def _preprocessing_layer():
    return ImageNormalization(
        axis=channel_axis(),
        mean=[255 * m for m in IMAGENET_MEAN],
        variance=[(255 * s) ** 2 for s in IMAGENET_STD],
        name=layer_name("preprocessing"),
    )


def _image_input(input_tensor, input_shape):
    if input_tensor is None:
        return layers.Input(shape=input_shape, name=layer_name("image"))
    if keras.backend.is_keras_tensor(input_tensor):
        return input_tensor
    return layers.Input(tensor=input_tensor, shape=input_shape)


def _stem(x, width):
    """Table 1's Conv1 (3x3/2, BN, ReLU) and MaxPool (3x3/2)."""
    x = _pad(x, layer_name("conv1_pad"))
    x = layers.Conv2D(
        width, 3, strides=2, use_bias=False, kernel_initializer="he_normal",
        name=layer_name("conv1"),
    )(x)
    x = _batch_norm(x, layer_name("conv1_bn"))
    x = layers.ReLU(name=layer_name("conv1_relu"))(x)
    # After the ReLU, zero padding acts as PyTorch's -inf padding.
    x = RowZeroPadding2D(1, name=layer_name("pool1_pad"))(x)
    return layers.MaxPooling2D(3, 2, name=layer_name("pool1"))(x)


def _head(x, include_top, pooling, classes, classifier_activation, bias):
    """Table 1's GlobalPool and FC, or the feature pooling without them."""
    # Under mixed precision the outputs are still float32.
    float32_out = keras.config.dtype_policy().compute_dtype != "float32"
    if include_top:
        x = layers.GlobalAveragePooling2D(name=layer_name("avg_pool"))(x)
        # No bias by default, as in the official release (and its
        # parameter counts).
        x = layers.Dense(
            classes, use_bias=bias, name=layer_name("predictions")
        )(x)
        if classifier_activation is not None or float32_out:
            x = layers.Activation(
                classifier_activation or "linear",
                dtype="float32",
                name=layer_name("predictions_activation"),
            )(x)
        return x
    if pooling == "avg":
        x = layers.GlobalAveragePooling2D(name=layer_name("avg_pool"))(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name=layer_name("max_pool"))(x)
    if float32_out:
        x = layers.Activation("linear", dtype="float32", name=layer_name("output"))(x)
    return x


def ShuffleNet(
    scale=1.0,
    groups=3,
    se=False,
    *,
    shallow=False,
    shuffle=True,
    shuffle_order=None,
    concat_order=None,
    stem_width=None,
    group_conv_implementation="split",
    bottleneck_multiple=1,
    include_top=True,
    include_preprocessing=None,
    classifier_bias=None,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
):
    """Instantiates ShuffleNet v1, "ShuffleNet s x (g = groups)".

    The network is Table 1: a 3x3/2 conv (BN, ReLU) and a 3x3/2 max pool,
    three stages of 4, 8 and 4 ShuffleNet units whose first unit has
    stride 2, global average pooling and a fully connected classifier.
    Padding, pooling and BN match the PyTorch implementations, so their
    ImageNet weights run exactly: `weights="imagenet"` downloads the most
    accurate published checkpoint for the variant (`keras_shufflenet.
    weights.pretrained_weights()` lists them). Where another
    implementation's network differs (shuffle order, concatenation order,
    stem width, classifier bias, input normalisation), an argument below
    expresses it, and named weights set it.

    Reference:
        Zhang et al., "ShuffleNet", section 3.3 and Table 1; Table 5 for
        `se` and `shallow`; Table 3 for `shuffle=False`.

    Args:
        scale: Width multiplier `s`, any positive number (the paper uses
            0.25, 0.5, 1, 1.5 and 2). See `shufflenet_widths`. Defaults to
            1.0.
        groups: Groups of the pointwise convolutions: 1, 2, 3, 4 or 8.
            Defaults to 3.
        se: Adds squeeze-and-excitation (reduction 16) to every unit's
            residual branch (Table 5). Defaults to False.
        shallow: Halves the units of stages 2 to 4 (Table 5's "0.5x
            shallow"). Defaults to False.
        shuffle: Whether to shuffle channels; False is Table 3's ablation.
            Defaults to True.
        shuffle_order: `"paper"` or `"official"`, the official release's
            inverse permutation. Defaults to `"paper"`, or to what
            pretrained `weights` need (a conflicting value is refused, as
            for every argument that says "or what `weights` need").
        concat_order: A stride-2 unit's concatenation, `"shortcut_first"`
            (the paper's figure and the official release) or
            `"branch_first"` (pytorchcv). Defaults to `"shortcut_first"`,
            or to what `weights` need.
        stem_width: conv1's output channels instead of
            `shufflenet_widths`' rule (pytorchcv's stem is `int(24 *
            scale)`). Defaults to the rule, or to what `weights` need.
        group_conv_implementation: Lowering of the pointwise group convs
            when training: `"split"`, `"grouped"` or `"dense"` (see
            `PointwiseGroupConv2D`). Defaults to `"split"`, the fastest to
            train on CPU and GPU. At inference they run as one grouped
            convolution, so that every TFLite conversion gets one native
            CONV_2D.
        bottleneck_multiple: Opt-in speed variant, not the paper's widths:
            rounds each group's bottleneck channels to a multiple of this,
            e.g. 16 to fill XNNPACK's AVX-512 tiles (1x g=3: 143.8 MFLOPs;
            its latency: tflite/README.md). Defaults to 1 (exact).
        include_top: Whether to include the classifier. Defaults to True.
        include_preprocessing: Whether the model normalises its input
            itself, so that it takes RGB pixel values in [0, 255] (a TFLite
            model then takes camera frames directly). Defaults to True, or
            to what `weights` need.
        classifier_bias: Whether the classifier has a bias. Defaults to
            False (the official release has none), or to what `weights`
            need.
        weights: None (random initialisation); `"imagenet"`; the name of a
            pretrained entry, such as `"shufflenet_1.0x_g3.pytorchcv"`; a
            checkpoint of a supported implementation (`.pth`, `.pth.tar`,
            `.pth.zip`); or a `.weights.h5` or `.keras` file. Defaults to
            None.
        input_tensor: Optional Keras tensor to use as the image input.
        input_shape: Optional `(height, width, 3)` tuple; height and width
            are at least 32 or None. Defaults to (224, 224, 3). With
            pretrained weights and `include_top=True` it must be the size
            the classifier was trained at, as in keras.applications.
        pooling: Feature pooling when `include_top=False`: None (the 4-D
            stage 4 output), `"avg"` or `"max"`.
        classes: Number of classes when `include_top=True`. Defaults to
            1000; pretrained weights need their own classifier's count.
        classifier_activation: Activation of the classifier, a string or
            callable; None returns logits. Defaults to `"softmax"`.
        name: Model name. Defaults to `variant_name(...)`, e.g.
            `"shufflenet_1.0x_g3"`.

    Returns:
        A functional `keras.Model`. Its outputs are float32 under mixed
        precision policies too.
    """
    plan = plan_weights(weights, scale, groups)
    options = architecture_options(
        plan if isinstance(plan, WeightsPlan) else None,
        shuffle_order=shuffle_order, concat_order=concat_order,
        stem_width=stem_width, include_preprocessing=include_preprocessing,
        classifier_bias=classifier_bias,
    )
    check_arguments(
        se=se, shuffle=shuffle, group_conv_implementation=(
            group_conv_implementation
        ), bottleneck_multiple=bottleneck_multiple, include_top=include_top,
        pooling=pooling, classes=classes,
        classifier_activation=classifier_activation, **options,
    )
    input_shape = check_input_shape(
        input_shape, input_tensor, options["include_preprocessing"]
    )
    if isinstance(plan, WeightsPlan):
        check_pretrained_variant(
            plan, shallow=shallow, se=se, shuffle=shuffle,
            bottleneck_multiple=bottleneck_multiple, include_top=include_top,
            classes=classes, input_shape=input_shape,
        )
    # Halving the units halves the stages' FLOPs; widening by sqrt(2)
    # restores them, as Table 5 compares "0.5x shallow" at ~40 MFLOPs.
    widths = shufflenet_widths(
        scale * (math.sqrt(2) if shallow else 1), groups,
        options["stem_width"],
    )
    _warn_if_channels_first_cannot_run()

    image = _image_input(input_tensor, input_shape)
    x = image
    if options["include_preprocessing"]:
        x = _preprocessing_layer()(x)
    x = _stem(x, widths[0])
    x = _stages(
        x, widths[1:], groups, shallow=shallow, se=se, shuffle=shuffle,
        shuffle_order=options["shuffle_order"],
        concat_order=options["concat_order"],
        implementation=group_conv_implementation,
        bottleneck_multiple=bottleneck_multiple,
    )
    x = _head(
        x, include_top, pooling, classes, classifier_activation,
        options["classifier_bias"],
    )

    if input_tensor is not None:
        image = keras.utils.get_source_inputs(input_tensor)
    name = name or variant_name(
        scale, groups, shallow=shallow, se=se, shuffle=shuffle
    )
    model = keras.Model(image, x, name=name)
    if isinstance(plan, WeightsPlan):
        plan.load(model)
    elif plan is not None:
        load_weights(model, plan)
    return model


def _stages(x, widths, groups, *, shallow, **unit_options):
    """Table 1's stages 2 to 4; each first unit has stride 2."""
    repeats = SHALLOW_STAGE_REPEATS if shallow else STAGE_REPEATS
    for stage, (width, units) in enumerate(zip(widths, repeats), 2):
        for unit in range(1, units + 1):
            x = shufflenet_unit(
                x,
                width,
                groups,
                stride=2 if unit == 1 else 1,
                group_first_conv=not (stage == 2 and unit == 1),
                stage=stage,
                index=unit,
                **unit_options,
            )
    return x


def feature_extractor(model):
    """Returns a multi-output backbone for detection (section 4.4).

    Args:
        model: A ShuffleNet from `ShuffleNet(...)`, usually with
            `include_top=False` and `input_shape=(None, None, 3)`.

    Returns:
        A `keras.Model` with the same input and a dict of outputs:
        `{"stage2": stride 8, "stage3": stride 16, "stage4": stride 32}`.
    """
    outputs = {
        stage: layer.output
        for stage, layer in network_parts(model).stage_outputs().items()
    }
    return keras.Model(model.input, outputs, name=f"{model.name}_features")
