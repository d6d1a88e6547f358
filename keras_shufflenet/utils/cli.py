"""Helpers for the command-line programs in recipes/, tflite/ and tools/."""

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
