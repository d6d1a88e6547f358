"""The latency benchmark's outputs: a markdown table, CSV, JSON and the
latency-against-FLOPs plot.
"""

import csv
import io
import json
import math
import os
import sys

from keras_shufflenet.lite.benchmark.latency import RESULT_FIELDS
from keras_shufflenet.utils.files import write_atomic
from keras_shufflenet.utils.plots import pyplot
from keras_shufflenet.utils.plots import write_figure


def format_value(value, digits=2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def markdown_table(benchmark):
    """Renders results like Table 8: one row per model and mode.

    Columns: MFLOPs and parameters at the first resolution, `.tflite`
    size, XNNPACK pieces, then per resolution the median latency in ms and
    the achieved GFLOP/s (2 x multiply-adds / median) in parentheses.

    Args:
        benchmark: `run_benchmark`'s result.

    Returns:
        A markdown string, with a caption naming the CPU, runtime, threads,
        timer and number of runs.
    """
    rows = benchmark["results"]
    resolutions = list(dict.fromkeys(r["resolution"] for r in rows))
    order = list(dict.fromkeys((r["model"], r["mode"]) for r in rows))
    cells = {(r["model"], r["mode"], r["resolution"]): r for r in rows}
    header = ["Model", "Mode", "MFLOPs", "Params (M)", "Size (MB)",
              "XNNPACK pieces"]
    header += [f"{res} ms (GFLOP/s)" for res in resolutions]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for model, mode in order:
        first = next(
            cells[(model, mode, res)] for res in resolutions
            if (model, mode, res) in cells
        )
        line = [
            model,
            mode,
            format_value(first["mflops"], 1),
            format_value(None if first["params"] is None else first["params"] / 1e6),
            format_value(first["size_bytes"] / 2**20),
            str(first["xnnpack_pieces"]),
        ]
        for res in resolutions:
            row = cells.get((model, mode, res))
            if row is None:
                line.append("-")
            else:
                line.append(
                    f"{row['median_ms']:.2f} ({format_value(row['gflops_per_s'], 1)})"
                )
        lines.append("| " + " | ".join(line) + " |")
    env = benchmark["environment"]
    settings = benchmark["settings"]
    runs = {r["resolution"]: r["num_runs"] for r in rows}
    runs = ", ".join(f"{n} runs at {k}" for k, n in runs.items())
    caption = (
        f"Median latency over {runs} "
        f"({settings['timer']} time), {settings['num_threads']} thread(s), "
        f"LiteRT {env['ai_edge_litert']} with XNNPACK on {env['cpu_model']}. "
        "MFLOPs are multiply-adds (the paper's unit) at the first "
        "resolution; GFLOP/s counts 2 FLOPs per multiply-add. int8 models "
        "output logits."
    )
    return "\n".join(lines) + "\n\n" + caption + "\n"


def _flat_row(row, env):
    flat = {field: row.get(field) for field in RESULT_FIELDS}
    for key in ("cpu_model", "ai_edge_litert", "tensorflow", "keras",
                "numpy", "python", "platform"):
        flat[key] = env.get(key)
    return flat


def results_csv(benchmark):
    """Returns the results as CSV text, with runtime versions and CPU."""
    env = benchmark["environment"]
    rows = [_flat_row(r, env) for r in benchmark["results"]]
    fields = list(RESULT_FIELDS) + [
        "cpu_model", "ai_edge_litert", "tensorflow", "keras", "numpy",
        "python", "platform",
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def results_json(benchmark):
    """Returns the whole benchmark (environment, settings, rows) as JSON."""
    return json.dumps(benchmark, indent=2, sort_keys=True) + "\n"


def plot_latency(benchmark, path):
    """Plots latency against MFLOPs: one point per model and mode.

    One panel per resolution, log-log axes, colour by family, marker by
    mode. Models without FLOPs (user `.tflite` files) are left out.

    Args:
        benchmark: `run_benchmark`'s result.
        path: The PNG to write (atomically).

    Returns:
        `{resolution: number of points drawn}`.
    """
    plt = pyplot()

    rows = [r for r in benchmark["results"] if r["mflops"]]
    resolutions = list(dict.fromkeys(r["resolution"] for r in rows))
    if not rows:
        raise ValueError("No results with FLOPs to plot.")
    families = sorted({r["family"] for r in rows})
    colours = dict(zip(families, plt.cm.tab10.colors))
    markers = {"float32": "o", "int8": "s", "float16": "^", "dynamic": "D"}
    fig, axes = plt.subplots(
        1, len(resolutions), figsize=(6 * len(resolutions), 5), squeeze=False
    )
    points = {}
    for ax, res in zip(axes[0], resolutions):
        for r in rows:
            if r["resolution"] != res:
                continue
            points[res] = points.get(res, 0) + 1
            ax.scatter(
                r["mflops"], r["median_ms"],
                color=colours[r["family"]],
                marker=markers.get(r["mode"], "x"),
                label=f"{r['family']} {r['mode']}",
            )
            ax.annotate(
                r["model"].replace("shufflenet_", "sn_").replace(
                    "mobilenet", "mb"
                ),
                (r["mflops"], r["median_ms"]),
                fontsize=7, xytext=(3, 3), textcoords="offset points",
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("MFLOPs (multiply-adds)")
        ax.set_ylabel(f"median latency, ms ({benchmark['settings']['timer']})")
        ax.set_title(res)
        ax.grid(True, which="both", alpha=0.3)
        handles, labels = ax.get_legend_handles_labels()
        unique = dict(zip(labels, handles))
        ax.legend(unique.values(), unique.keys(), fontsize=7)
    env = benchmark["environment"]
    fig.suptitle(
        f"LiteRT {env['ai_edge_litert']} + XNNPACK, "
        f"{benchmark['settings']['num_threads']} thread(s), "
        f"{env['cpu_model']}",
        fontsize=10,
    )
    fig.tight_layout()
    write_figure(fig, path, dpi=120)
    return points


def write_outputs(benchmark, output_dir, stem="benchmark"):
    """Writes `<stem>.md`, `.csv`, `.json` and `.png` to `output_dir`.

    Returns:
        A dict from extension to path.
    """
    paths = {
        ext: os.path.join(os.fspath(output_dir), f"{stem}.{ext}")
        for ext in ("md", "csv", "json", "png")
    }
    write_atomic(paths["md"], markdown_table(benchmark))
    write_atomic(paths["csv"], results_csv(benchmark))
    write_atomic(paths["json"], results_json(benchmark))
    if any(r["mflops"] for r in benchmark["results"]):
        plot_latency(benchmark, paths["png"])
    else:
        del paths["png"]
    return paths


def print_progress(message):
    """A `progress` callable printing to stderr immediately."""
    print(message, file=sys.stderr, flush=True)
