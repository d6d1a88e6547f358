"""Helpers for the command-line programs in recipes/, tflite/ and tools/."""

import os
import sys

import keras


def exit_on_errors(main, errors=(FileNotFoundError, ValueError)):
    """Wraps an absl `main` so that `errors` end the program in one line.

    A bad flag value or a missing file then prints `ERROR: <message>` and
    exits with status 1, instead of a traceback.

    Args:
        main: The program's `main(argv)`.
        errors: Exception types to report this way.

    Returns:
        A `main(argv)` to pass to `absl.app.run`.
    """

    def run(argv):
        try:
            return main(argv)
        except errors as e:
            sys.exit(f"ERROR: {e}")

    return run


def run_on_tensorflow(program):
    """Runs this program again under Keras' TensorFlow backend if needed.

    TFLite conversion and evaluation trace TensorFlow graphs, so they need
    Keras' TensorFlow backend; a `.keras` file saved under JAX or PyTorch
    loads there unchanged. Under another backend (`KERAS_BACKEND=jax`),
    this replaces the process with the same command and
    `KERAS_BACKEND=tensorflow`, and says so.

    Args:
        program: The program's name, for the message.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return
    rerun_with_env(
        f"{program} runs on TensorFlow; running it again with "
        f"KERAS_BACKEND=tensorflow (Keras' backend here: {backend}). "
        "Models saved under any backend load there.",
        KERAS_BACKEND="tensorflow",
    )


def rerun_with_env(message, **env):
    """Replaces this process with the same command under `env`.

    For settings that take effect only when a library is first imported
    (Keras' backend, TensorFlow's oneDNN). The process keeps its id, so a
    supervisor's signals still reach it.

    Args:
        message: Printed to stderr first, saying why.
        **env: Environment variables to set.
    """
    print(message, file=sys.stderr, flush=True)
    os.execve(
        sys.executable, [sys.executable, *sys.argv], dict(os.environ, **env)
    )
