"""Loading ShuffleNets and their weights: whole `.keras` models (in safe
mode), and `.weights.h5`/`.keras` weights with one clear error when the
file holds another architecture.
"""

import os
import warnings

import keras


def load_model(path, argument="model_path"):
    """Loads a whole `.keras` model in safe mode, with errors naming it.

    Every layer of this package is registered, so no `custom_objects` are
    needed, and no Python code from the file runs.

    Args:
        path: Path of a `.keras` file.
        argument: The argument or flag `path` came from, for messages.

    Returns:
        A `keras.Model`.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The path is not a `.keras` file.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(
            f"`{argument}` must be a .keras file. Received: "
            f"{argument}={path!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"`{argument}` not found: {path!r}")
    return keras.saving.load_model(path, safe_mode=True)


def load_weights(model, path):
    """Loads a `.weights.h5` or `.keras` file, with errors naming the file.

    Args:
        model: The model to load into.
        path: Path of a `.weights.h5` file or a `.keras` archive.

    Raises:
        FileNotFoundError: The file does not exist.
        ValueError: The file is not a weights file, or its weights do not
            fit the model (the message names the path).
    """
    path = os.fspath(path)
    if not path.endswith((".weights.h5", ".keras")):
        raise ValueError(
            "`weights` must be a path ending in .weights.h5 or .keras. "
            f"Received: weights={path!r}"
        )
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Weights file not found: {path}")
    # Keras warns once per layer it finds no weights for, then may still
    # succeed and leave those layers at their initial values: collect the
    # warnings and turn them into one error that names the file.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            model.load_weights(path)
            error = None
        except Exception as e:  # Keras raises several types for a bad file.
            error = e
    skipped = [w for w in caught if "Skipping" in str(w.message)]
    for w in caught:
        if w not in skipped:
            warnings.warn_explicit(
                w.message, w.category, w.filename, w.lineno
            )
    if error is not None or skipped:
        reasons = []
        if skipped:
            reasons.append(
                f"the file has no weights for {len(skipped)} of the model's "
                "layers or containers."
            )
        if error is not None:
            reasons.append(_summarize_load_error(error))
        raise ValueError(
            f"Could not load weights from {path} into model {model.name!r}; "
            f"the file does not fit this architecture: {' '.join(reasons)}"
        ) from error


def _summarize_load_error(error):
    # Keras' message goes on to print the whole target variable's values.
    text = str(error).split("Target variable")[0]
    text = " ".join(text.split())
    return text if len(text) <= 600 else text[:597] + "..."
