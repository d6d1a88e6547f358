"""Where a model's latency goes: cumulative timings of its prefixes,
block by block, against their FLOPs.
"""

import dataclasses
import os

import keras

from keras_shufflenet.lite.benchmark.latency import convert_cached
from keras_shufflenet.lite.benchmark.reporting import format_value
from keras_shufflenet.lite.benchmark.timing import DEFAULT_LAYOUTS
from keras_shufflenet.lite.benchmark.timing import DEFAULT_NUM_RUNS
from keras_shufflenet.lite.benchmark.timing import DEFAULT_WARMUP
from keras_shufflenet.lite.benchmark.timing import measure_in_layouts
from keras_shufflenet.models.complexity import complexity
from keras_shufflenet.models.parts import network_parts
from keras_shufflenet.utils.timing import timing_stats


def shufflenet_blocks(model):
    """The last layer of each block of a ShuffleNet, in order.

    Blocks: `stem` (conv1 with BN and ReLU), `pool1`, every unit
    (`stage2_unit1`, ...) and `head` (pooling and classifier).

    Args:
        model: A `ShuffleNet(...)` model.

    Returns:
        A list of `(block, layer name)`; the head's layer is the model's
        last.
    """
    parts = network_parts(model)
    stem = [(role, parts.stem.get(role)) for role in ("conv1_relu", "pool1")]
    missing = [role for role, layer in stem if layer is None]
    if missing:
        raise ValueError(
            f"`model` ({model.name!r}) is not a ShuffleNet: it has no "
            f"layers {missing}."
        )
    blocks = [("stem", stem[0][1].name), ("pool1", stem[1][1].name)]
    blocks += [(unit.name, unit.output.name) for unit in parts.units]
    blocks.append(("head", model.layers[-1].name))
    return blocks


def _prefix_spec(spec, block, layer):
    def build(input_shape, logits):
        model = spec.build(input_shape, logits)
        output = model.get_layer(layer).output
        return keras.Model(model.inputs, output, name=f"{model.name}_{block}")

    return dataclasses.replace(
        spec,
        name=f"{spec.name}@{block}",
        builder=build,
        kwargs=spec.kwargs + (("until", layer),),
    )


def profile_blocks(
    spec,
    resolution=(224, 224),
    mode="float32",
    *,
    blocks=None,
    num_threads=1,
    num_runs=DEFAULT_NUM_RUNS,
    warmup=DEFAULT_WARMUP,
    cache_dir=None,
    timer="wall",
    layouts=DEFAULT_LAYOUTS,
    progress=None,
):
    """Times each block by converting the model truncated after it.

    The model cut after block k is converted and timed like a whole model
    (XNNPACK's fusions stay intact inside it); a block's time is the
    difference of the medians of consecutive truncations, interleaved in
    one run. This is what LiteRT's `benchmark_model
    --enable_op_profiling=true` reports per op, at block granularity, from
    Python.

    Reference:
        Zhang et al., "ShuffleNet", section 4.5 (where actual time goes).

    Args:
        spec: A Keras `ModelSpec`, e.g. `SHUFFLENETS["shufflenet_1.0x_g3"]`.
        resolution: `(height, width)`. Defaults to (224, 224).
        mode: Conversion mode. Defaults to `"float32"`.
        blocks: `(block, last layer name)` pairs. Defaults to
            `shufflenet_blocks` of the model.
        num_threads, num_runs, warmup, cache_dir, timer, layouts,
            progress: As in `run_benchmark`.

    Returns:
        A list of dicts, one per block: `block`, `layer`, `cumulative_ms`,
        `block_ms`, `share` (of the whole model), `mflops` and
        `gflops_per_s` of the block.
    """
    cache_dir = cache_dir or os.path.join(
        os.path.expanduser("~"), ".cache", "keras_shufflenet", "tflite"
    )
    model = spec.build(tuple(resolution) + (3,), logits=mode == "int8")
    if blocks is None:
        blocks = shufflenet_blocks(model)
    paths, flops = {}, {}
    for block, layer in blocks:
        prefix = _prefix_spec(spec, block, layer)
        paths[block] = convert_cached(
            prefix, resolution, mode, cache_dir, progress=progress
        )
        flops[block] = complexity(prefix.build(
            tuple(resolution) + (3,), logits=mode == "int8"
        ))["flops"]
    if progress:
        progress(f"timing {len(paths)} truncated models ...")
    times, _, _ = measure_in_layouts(
        paths, num_runs, warmup, layouts, num_threads, progress
    )
    medians = {b: timing_stats(times[b][timer])["median_ms"] for b in paths}
    return block_rows(blocks, medians, flops)


def block_rows(blocks, cumulative_ms, cumulative_flops):
    """Per-block time and FLOPs from those of the truncated models.

    Args:
        blocks: `(block, layer)` pairs in order; the last is the model.
        cumulative_ms: `{block: median ms of the model cut after it}`.
        cumulative_flops: `{block: multiply-adds of that model}`.

    Returns:
        The rows `profile_blocks` returns.
    """
    total = cumulative_ms[blocks[-1][0]]
    rows, previous_ms, previous_flops = [], 0.0, 0
    for block, layer in blocks:
        block_ms = cumulative_ms[block] - previous_ms
        block_flops = cumulative_flops[block] - previous_flops
        rows.append(
            {
                "block": block,
                "layer": layer,
                "cumulative_ms": cumulative_ms[block],
                "block_ms": block_ms,
                "share": block_ms / total,
                "mflops": block_flops / 1e6,
                "gflops_per_s": (
                    2 * block_flops / (block_ms * 1e6) if block_ms > 0
                    else None
                ),
            }
        )
        previous_ms = cumulative_ms[block]
        previous_flops = cumulative_flops[block]
    return rows


def profile_table(rows):
    """Renders `profile_blocks`' rows as markdown."""
    lines = [
        "| Block | ms | share | cumulative ms | MFLOPs | GFLOP/s |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['block']} | {r['block_ms']:.3f} | {100 * r['share']:.1f}% "
            f"| {r['cumulative_ms']:.3f} | {r['mflops']:.1f} "
            f"| {format_value(r['gflops_per_s'], 1)} |"
        )
    return "\n".join(lines) + "\n"
