"""Figures for results people would rather see than read (training
curves, latency against FLOPs), drawn off-screen and written atomically.
"""

import io

from keras_shufflenet.utils.files import write_atomic


def pyplot():
    """matplotlib's pyplot on the Agg backend: no display needed."""
    # Plotting only: matplotlib costs a second to import.
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    return plt


def write_figure(fig, path, dpi=100):
    """Writes `fig` to `path` as a PNG, atomically, and closes it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    pyplot().close(fig)
    write_atomic(path, buffer.getvalue())
