"""What the absl programs in recipes/ and tflite/ share."""

import sys


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


def recipe_config(argv, configs_dir):
    """Parses a recipe program's flags into an `ExperimentConfig`.

    Refuses stray arguments, quiets TensorFlow's INFO logging unless
    `--verbosity` was given, and turns a bad recipe or override into an
    absl usage error.

    Args:
        argv: The arguments absl passed to `main`.
        configs_dir: Directory of the named recipes.

    Returns:
        The `ExperimentConfig` of `--recipe` with the flags applied.
    """
    from absl import app
    from absl import flags
    from absl import logging

    from keras_shufflenet import training

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO chatter.
    try:
        return training.config_from_flags(configs_dir)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
