"""Which trainer runs the recipe on the Keras backend in use: `Trainer`
(`tf.distribute`) on TensorFlow, `JaxTrainer` (`keras.distribution`) on
JAX. JAX and Orbax are imported only when JAX is the backend.
"""

import keras

from keras_shufflenet.training.trainer import Trainer


def trainer_class(backend=None):
    """The trainer class for a Keras backend.

    Args:
        backend: `"tensorflow"` or `"jax"`. Defaults to the one in use.

    Returns:
        `Trainer` or `JaxTrainer`.

    Raises:
        ImportError: JAX, without the `[jax]` extra installed.
        ValueError: Another backend (PyTorch trains the model with
            `model.fit`, not this recipe).
    """
    backend = backend or keras.backend.backend()
    if backend == "tensorflow":
        return Trainer
    if backend == "jax":
        try:
            from keras_shufflenet.training.jax_training import JaxTrainer
        except ImportError as e:
            raise ImportError(
                f"Training on JAX needs jax and orbax-checkpoint ({e}). "
                'From a clone: pip install -e ".[jax]"'
            ) from e
        return JaxTrainer
    raise ValueError(
        "The training recipe runs on KERAS_BACKEND=tensorflow or jax. "
        f"Received: {backend!r}. On PyTorch, train `ks.ShuffleNet(...)` "
        "with `model.fit`, save it as .keras, and convert that with "
        "tflite/convert.py."
    )


def train(config, strategy=None, verbose=True):
    """Runs (or resumes) a whole experiment: train, evaluate, export.

    Reference:
        Zhang et al., ShuffleNet, section 4.

    Args:
        config: An `ExperimentConfig`.
        strategy: Optional `tf.distribute.Strategy` (TensorFlow only).
            Defaults to the one `config.strategy` names; on JAX
            `config.strategy` picks the devices.
        verbose: Print progress. Defaults to True.

    Returns:
        A `TrainResult`.
    """
    return trainer_class()(config, strategy, verbose).fit()
