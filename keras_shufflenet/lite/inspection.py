"""What is inside a `.tflite` file: its ops, its inputs and outputs, and
how much of it XNNPACK runs.
"""

import collections
import os
import re

import numpy as np
from ai_edge_litert.interpreter import Interpreter
from ai_edge_litert.interpreter import OpResolverType
from ai_edge_litert.tools import flatbuffer_utils

# Ops whose output passes its input's values through (quantization
# plumbing); looked through when asking what computed a model output.
PASS_THROUGH_OPS = ("DEQUANTIZE", "QUANTIZE", "RESHAPE")


class UnsupportedOpError(ValueError):
    """The graph needs an op outside TFLite's builtin set (e.g. Flex)."""


def model_bytes(tflite, argument="tflite"):
    if isinstance(tflite, (bytes, bytearray, memoryview)):
        return bytes(tflite)
    if isinstance(tflite, (str, os.PathLike)):
        path = os.fspath(tflite)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"TFLite model not found: {path}")
        with open(path, "rb") as f:
            return f.read()
    raise ValueError(
        f"`{argument}` must be .tflite bytes or a path. Received: "
        f"{type(tflite).__name__}"
    )


def make_interpreter(
    tflite, delegate=True, num_threads=1, preserve_all_tensors=False
):
    resolver = (
        OpResolverType.AUTO
        if delegate
        else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    )
    interpreter = Interpreter(
        model_content=model_bytes(tflite),
        experimental_op_resolver_type=resolver,
        num_threads=num_threads,
        # Intermediate tensors readable after `invoke` (no delegate).
        experimental_preserve_all_tensors=preserve_all_tensors,
    )
    interpreter.allocate_tensors()
    return interpreter


def read_flatbuffer(tflite):
    return flatbuffer_utils.read_model_from_bytearray(bytearray(tflite))


def op_name(model, opcode_index):
    code = model.operatorCodes[opcode_index]
    if code.customCode:
        return code.customCode.decode("ascii")
    return flatbuffer_utils.opcode_to_name(model, opcode_index)


def op_list(tflite):
    """Returns the ops of every subgraph of a `.tflite`, in order.

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        A list of op names: builtin names such as "CONV_2D", or the custom
        code (e.g. "FlexConv2D") for custom ops.
    """
    model = read_flatbuffer(model_bytes(tflite))
    return [
        op_name(model, op.opcodeIndex)
        for subgraph in model.subgraphs
        for op in subgraph.operators
    ]


WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def weight_scales(tflite):
    """How many scales each weighted op's int8 kernel has.

    One is per-tensor quantization, one per output channel is per-channel
    (some accelerators take only the former).

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        `(op name, number of scales)` for every op of `WEIGHTED_OPS`, in
        graph order; 0 scales for a float kernel.
    """
    model = read_flatbuffer(model_bytes(tflite))
    found = []
    for subgraph in model.subgraphs:
        for op in subgraph.operators:
            name = op_name(model, op.opcodeIndex)
            if name in WEIGHTED_OPS:
                kernel = subgraph.tensors[op.inputs[1]]
                scales = kernel.quantization and kernel.quantization.scale
                found.append((name, 0 if scales is None else len(scales)))
    return found


def check_builtin_ops(tflite):
    """Raises `UnsupportedOpError` if a `.tflite` has non-builtin ops.

    Flex ops (TF kernels, "Flex..." custom ops) need the
    SELECT_TF_OPS runtime, which pip LiteRT interpreters do not have
    (google-ai-edge/LiteRT#6458); other custom ops need registration.

    Args:
        tflite: `.tflite` bytes or path.
    """
    model = read_flatbuffer(model_bytes(tflite))
    custom = sorted(
        {
            code.customCode.decode("ascii")
            for code in model.operatorCodes
            if code.customCode
        }
    )
    if custom:
        flex = [name for name in custom if name.startswith("Flex")]
        kind = "Flex (SELECT_TF_OPS)" if flex else "custom"
        raise UnsupportedOpError(
            f"The TFLite model has {kind} ops {custom}; only builtin ops "
            "are allowed, as the pip LiteRT runtimes cannot run Flex ops."
        )


# XNNPACK's int8 convolutions and fully connected layers need each output
# channel's requantization scale (input scale x filter scale / output
# scale) below 256; a larger one fails delegate preparation.
XNNPACK_MAX_REQUANTIZATION_SCALE = 256.0
_WEIGHTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED")


def xnnpack_scale_violations(tflite):
    """Lists int8 ops whose requantization scale XNNPACK cannot run.

    A BN-folded depthwise channel whose batch variance is near zero gets a
    filter scale so large that `input_scale * filter_scale / output_scale`
    reaches 256; XNNPACK then fails to prepare the whole model. Such a
    channel is also destroyed by int8 anyway: one input step moves its
    output by hundreds of steps.

    Args:
        tflite: `.tflite` bytes or path.

    Returns:
        A list of dicts: `op`, `index`, `tensor` (output name), `layer`
        (the Keras layer name read from it, or None), `max_scale` and
        `channels` (how many exceed the limit).
    """
    model = read_flatbuffer(model_bytes(tflite))
    subgraph = model.subgraphs[0]

    def scales(index):
        q = subgraph.tensors[index].quantization
        if q is None or q.scale is None or len(q.scale) == 0:
            return None
        return np.asarray(q.scale, np.float64)

    found = []
    for index, op in enumerate(subgraph.operators):
        name = op_name(model, op.opcodeIndex)
        if name not in _WEIGHTED_OPS:
            continue
        x, w, y = (scales(op.inputs[0]), scales(op.inputs[1]),
                   scales(op.outputs[0]))
        if x is None or w is None or y is None:
            continue
        ratio = x[0] * w / y[0]
        bad = ratio >= XNNPACK_MAX_REQUANTIZATION_SCALE
        if bad.any():
            tensor = subgraph.tensors[op.outputs[0]].name.decode()
            found.append(
                {
                    "op": name,
                    "index": index,
                    "tensor": tensor,
                    "layer": _layer_of(tensor),
                    "max_scale": float(ratio.max()),
                    "channels": int(bad.sum()),
                }
            )
    return found


def _layer_of(tensor_name):
    """The Keras layer in `model_1/layer_1/op`, or None."""
    parts = tensor_name.split(";")[0].split("/")
    if len(parts) < 3:
        return None
    return re.sub(r"_\d+$", "", parts[1])


def xnnpack_coverage(tflite, num_threads=1):
    """Measures which ops of a `.tflite` the XNNPACK delegate takes.

    How: LiteRT's Python interpreter applies XNNPACK by default. Each
    partition XNNPACK claims becomes one "DELEGATE" node appended after the
    model's own nodes; the replaced nodes stay in the node list but leave
    the execution plan. A delegate node's inputs and outputs are its
    partition's boundary tensors, and partitions are closed subgraphs, so
    walking producers back from a delegate node's outputs until its inputs
    recovers exactly the nodes it replaced. Every other node runs on a
    builtin CPU kernel.

    Args:
        tflite: `.tflite` bytes or path.
        num_threads: Interpreter threads. Defaults to 1.

    Returns:
        A dict: `partitions` (delegate nodes), `pieces` (nodes in the
        execution plan: partitions plus ops left out; 1 means XNNPACK runs
        the whole graph), `delegated_ops` (count), `ops_left_out`
        (`{op name: count}`) and `total_ops`. When XNNPACK fails to prepare
        the model (LiteRT then refuses to run it with default settings),
        `pieces` is None, `error` holds the message and `scale_violations`
        the likely cause.
    """
    tflite = model_bytes(tflite)
    model = read_flatbuffer(tflite)
    operators = model.subgraphs[0].operators
    total = len(operators)
    try:
        interpreter = make_interpreter(tflite, delegate=True,
                                   num_threads=num_threads)
    except RuntimeError as e:
        # XNNPACK claimed a partition, then failed to build it.
        return {
            "partitions": None,
            "pieces": None,
            "delegated_ops": 0,
            "ops_left_out": {},
            "total_ops": total,
            "error": str(e),
            "scale_violations": xnnpack_scale_violations(tflite),
        }
    producer = {}
    for index, op in enumerate(operators):
        for tensor in op.outputs:
            producer[tensor] = index
    delegated = set()
    partitions = 0
    for node in range(total, interpreter._interpreter.NumNodes()):
        partitions += 1
        boundary = set(interpreter._interpreter.NodeInputs(node))
        stack = list(interpreter._interpreter.NodeOutputs(node))
        while stack:
            tensor = stack.pop()
            if tensor in boundary or tensor not in producer:
                continue
            index = producer[tensor]
            if index in delegated:
                continue
            delegated.add(index)
            stack.extend(t for t in operators[index].inputs if t >= 0)
    left = collections.Counter(
        op_name(model, operators[i].opcodeIndex)
        for i in range(total)
        if i not in delegated
    )
    return {
        "partitions": partitions,
        "pieces": partitions + sum(left.values()),
        "delegated_ops": len(delegated),
        "ops_left_out": dict(sorted(left.items())),
        "total_ops": total,
    }


def _io_details(model, tensor_indices):
    """Name, shape, dtype and per-tensor quantization of I/O tensors."""

    subgraph = model.subgraphs[0]
    out = []
    for index in tensor_indices:
        tensor = subgraph.tensors[index]
        q = tensor.quantization
        scales = [] if q is None or q.scale is None else list(q.scale)
        zero_points = (
            [] if q is None or q.zeroPoint is None else list(q.zeroPoint)
        )
        out.append(
            {
                "name": tensor.name.decode(),
                "shape": [int(d) for d in tensor.shape],
                "dtype": flatbuffer_utils.type_to_name(tensor.type).lower(),
                "scale": float(scales[0]) if len(scales) == 1 else None,
                "zero_point": (
                    int(zero_points[0]) if len(zero_points) == 1 else None
                ),
            }
        )
    return out


def model_report(tflite, num_threads=1):
    """Describes a `.tflite` for deployment: size, ops, XNNPACK, ranks.

    Reference:
        Zhang et al., ShuffleNet, section 4.1 (the operations that make up
        the network and their cost on mobile devices).

    Args:
        tflite: `.tflite` bytes or path.
        num_threads: Interpreter threads for the XNNPACK check. Defaults
            to 1.

    Returns:
        A JSON-serialisable dict: `size_bytes`; `num_ops` and `ops`
        (`{op name: count}` over all subgraphs); `flex_ops` (custom op
        names, should be empty); `xnnpack` (see `xnnpack_coverage`);
        `max_tensor_rank` and `tensor_ranks` (`{rank: count}`); `inputs`
        and `outputs` (name, shape, dtype, quantization scale/zero point).
    """
    tflite = model_bytes(tflite)
    model = read_flatbuffer(tflite)
    ops = op_list(tflite)
    ranks = collections.Counter(
        len(tensor.shape if tensor.shape is not None else ())
        for subgraph in model.subgraphs
        for tensor in subgraph.tensors
    )
    custom = sorted(
        {c.customCode.decode("ascii") for c in model.operatorCodes
         if c.customCode}
    )
    # A model the interpreter cannot load (Flex ops) still gets a report.
    xnnpack = None
    if not custom:
        xnnpack = xnnpack_coverage(tflite, num_threads=num_threads)
    return {
        "size_bytes": len(tflite),
        "num_ops": len(ops),
        "ops": dict(sorted(collections.Counter(ops).items())),
        "flex_ops": custom,
        "xnnpack": xnnpack,
        "max_tensor_rank": max(ranks) if ranks else 0,
        "tensor_ranks": {str(k): v for k, v in sorted(ranks.items())},
        "inputs": _io_details(model, model.subgraphs[0].inputs),
        "outputs": _io_details(model, model.subgraphs[0].outputs),
    }


def format_report(report, title=None):
    """Renders `model_report` output as a plain-text table.

    Args:
        report: A dict from `model_report`.
        title: Optional first line. Defaults to None.

    Returns:
        A multi-line string.
    """
    x = report["xnnpack"]
    lines = [title] if title else []
    io = lambda d: (  # noqa: E731
        f"{d['dtype']}{d['shape']}"
        + (f" scale={d['scale']:.4g} zp={d['zero_point']}"
           if d["scale"] else "")
    )
    lines += [
        f"  size            {report['size_bytes'] / 1024:.1f} KiB",
        f"  inputs          {', '.join(io(d) for d in report['inputs'])}",
        f"  outputs         {', '.join(io(d) for d in report['outputs'])}",
        f"  ops             {report['num_ops']}",
    ]
    lines += [f"    {name:<24}{n:>5}" for name, n in report["ops"].items()]
    if x is None:
        lines.append("  XNNPACK         not loadable (custom ops)")
    elif x["pieces"] is None:
        layers = ", ".join(
            f"{v['layer']} ({v['max_scale']:.0f})"
            for v in x["scale_violations"]
        )
        lines.append(
            "  XNNPACK         FAILS TO PREPARE: requantization scale >= "
            f"256 in {layers or 'unknown ops'}; convert with "
            "float_layers=['auto']"
        )
    else:
        left = ", ".join(f"{k} x{v}" for k, v in x["ops_left_out"].items())
        lines += [
            f"  XNNPACK pieces  {x['pieces']} ({x['partitions']} delegated "
            f"partitions, {x['delegated_ops']}/{x['total_ops']} ops)",
            f"  left out        {left or 'none'}",
        ]
    lines += [
        f"  max tensor rank {report['max_tensor_rank']}",
        f"  flex/custom ops {', '.join(report['flex_ops']) or 'none'}",
    ]
    return "\n".join(lines)
