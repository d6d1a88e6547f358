"""Argument checks with errors that name the argument."""


def check_choice(name, value, choices):
    """Raises a ValueError naming `name` unless `value` is in `choices`."""
    if value not in choices:
        raise ValueError(
            f"`{name}` must be one of {choices}. Received: {name}={value!r}"
        )
