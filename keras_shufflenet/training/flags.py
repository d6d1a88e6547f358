"""Configs from the command line: a recipe file, then one absl flag per
config field (`--train.batch_size=...`).
"""

import dataclasses
import importlib.util
import os
import typing

from absl import app
from absl import flags
from absl import logging

from keras_shufflenet.training.config import ExperimentConfig
from keras_shufflenet.training.config import config_from_dict
from keras_shufflenet.training.config import config_to_dict
from keras_shufflenet.training.config import strip_optional


def config_fields(cls=ExperimentConfig, prefix=""):
    """Lists every leaf field of a config as `(dotted_name, type, default)`.

    Used to define one command-line flag per field.

    Args:
        cls: A config dataclass. Defaults to `ExperimentConfig`.
        prefix: Prefix of the dotted names.

    Returns:
        A list of `(name, type_hint, default)` tuples.
    """
    hints = typing.get_type_hints(cls)
    fields = []
    defaults = cls()
    for field in dataclasses.fields(cls):
        hint = hints[field.name]
        value = getattr(defaults, field.name)
        if dataclasses.is_dataclass(hint):
            fields.extend(config_fields(type(value), f"{prefix}{field.name}."))
        else:
            fields.append((prefix + field.name, hint, value))
    return fields


def parse_field_value(name, hint, text):
    """Parses a command-line string for a config field of type `hint`.

    Accepts `none` for Optional fields, `true`/`false` for bools and
    comma-separated numbers for tuples.

    Args:
        name: Dotted field name, for error messages.
        hint: The field's type hint.
        text: The string to parse.

    Returns:
        The parsed value.
    """
    optional = strip_optional(hint) is not hint
    base = strip_optional(hint)
    if optional and text.strip().lower() in ("none", "null", ""):
        return None
    try:
        if base is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if base is int:
            return int(text)
        if base is float:
            return float(text)
        if base is str:
            return text
        if typing.get_origin(base) is tuple:
            item_types = typing.get_args(base)
            items = [s for s in text.split(",") if s.strip()]
            if len(items) != len(item_types):
                raise ValueError(text)
            return tuple(t(s) for t, s in zip(item_types, items))
    except ValueError:
        pass
    expected = getattr(base, "__name__", str(base))
    if optional:
        expected = f"optional {expected}"
    article = "an" if expected[0] in "aeiou" else "a"
    raise ValueError(
        f"`{name}` expects {article} {expected} value. Received: "
        f"{name}={text!r}"
    )


def apply_overrides(config, overrides):
    """Returns a copy of `config` with dotted-name overrides applied.

    Args:
        config: An `ExperimentConfig`.
        overrides: Dict from dotted field names (`"optimizer.lr"`) to
            values, either already typed or strings to parse.

    Returns:
        A new `ExperimentConfig`.

    Example:
        ```python
        config = apply_overrides(config, {"optimizer.lr": "0.1",
                                          "train.epochs": 3})
        ```
    """
    values = config_to_dict(config)
    fields = {name: hint for name, hint, _ in config_fields()}
    for name, value in overrides.items():
        if name not in fields:
            close = [
                f for f in fields if f.split(".")[-1] == name.split(".")[-1]
            ]
            raise ValueError(
                f"Unknown config field {name!r}."
                + (f" Did you mean {close}?" if close else "")
            )
        if isinstance(value, str):
            value = parse_field_value(name, fields[name], value)
        node = values
        *parents, leaf = name.split(".")
        for parent in parents:
            node = node[parent]
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return config_from_dict(values)


def load_recipe(path):
    """Loads `get_config()` from a recipe file such as a paper model's.

    Args:
        path: Path of a Python file that defines `get_config()` returning an
            `ExperimentConfig`.

    Returns:
        The `ExperimentConfig`.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Recipe file not found: {path}")
    name = "keras_shufflenet_recipe_" + os.path.basename(path).replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"Recipe {path} defines no get_config() function.")
    config = module.get_config()
    if not isinstance(config, ExperimentConfig):
        raise TypeError(
            f"get_config() of {path} must return an ExperimentConfig. "
            f"Received: {type(config).__name__}"
        )
    return config


def define_config_flags(default_recipe, flag_values=None):
    """Defines `--recipe` and one absl flag per `ExperimentConfig` field.

    Field flags are named by their dotted path (`--optimizer.lr=0.1`,
    `--data.train_path=...`, `--strategy=tpu`) and override the recipe's
    value only when given.

    Args:
        default_recipe: Recipe used when `--recipe` is not given.
        flag_values: absl `FlagValues`. Defaults to `absl.flags.FLAGS`.
    """
    flag_values = flag_values or flags.FLAGS
    flags.DEFINE_string(
        "recipe",
        default_recipe,
        "Recipe name (a file in recipes/configs without .py) or path of a "
        "Python file defining get_config().",
        flag_values=flag_values,
    )
    for name, hint, default in config_fields():
        base = strip_optional(hint)
        type_name = getattr(base, "__name__", str(base))
        flags.DEFINE_string(
            name,
            None,
            f"Overrides the recipe's {name} ({type_name}; default of the "
            f"dataclass: {default!r}).",
            flag_values=flag_values,
        )


def recipe_path(recipe, configs_dir):
    """Maps a recipe name or path to its file, listing names on failure."""
    if recipe.endswith(".py"):
        return recipe
    path = os.path.join(configs_dir, f"{recipe}.py")
    if not os.path.isfile(path):
        names = sorted(
            f[:-3]
            for f in os.listdir(configs_dir)
            if f.endswith(".py") and not f.startswith("_")
        )
        raise ValueError(
            f"Unknown recipe {recipe!r}. Available in {configs_dir}: "
            f"{', '.join(names)}"
        )
    return path


def config_from_flags(configs_dir, flag_values=None, base=None):
    """Loads `--recipe` and applies every field flag that was given.

    `model_dir` defaults to `runs/<recipe>` in the working directory.

    Args:
        configs_dir: Directory of the named recipes.
        flag_values: Parsed absl `FlagValues`. Defaults to `FLAGS`.
        base: An `ExperimentConfig` to start from instead of the recipe's
            when `--recipe` is not given. Defaults to None.

    Returns:
        An `ExperimentConfig`.
    """
    flag_values = flag_values or flags.FLAGS
    recipe = flag_values["recipe"].value
    if base is not None and not flag_values["recipe"].present:
        config, recipe = base, "evaluate"
    else:
        config = load_recipe(recipe_path(recipe, configs_dir))
    if not config.model_dir:
        name = os.path.basename(recipe)
        name = name.removesuffix(".py")
        config.model_dir = os.path.join("runs", name)
    overrides = {
        name: flag_values[name].value
        for name, _, _ in config_fields()
        if flag_values[name].present
    }
    return apply_overrides(config, overrides)


def recipe_config(argv, configs_dir, base=None):
    """Parses a recipe program's flags into an `ExperimentConfig`.

    Refuses stray arguments, quiets TensorFlow's INFO logging unless
    `--verbosity` was given, and turns a bad recipe or override into an
    absl usage error.

    Args:
        argv: The arguments absl passed to `main`.
        configs_dir: Directory of the named recipes.
        base: Starts from this config when `--recipe` is not given (see
            `config_from_flags`). Defaults to None.

    Returns:
        The `ExperimentConfig` of `--recipe` with the flags applied.
    """
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not flags.FLAGS["verbosity"].present:
        logging.set_verbosity(logging.WARNING)  # TensorFlow's INFO chatter.
    try:
        return config_from_flags(configs_dir, base=base)
    except (ValueError, TypeError, FileNotFoundError) as e:
        raise app.UsageError(str(e)) from None
