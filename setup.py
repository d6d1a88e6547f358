"""Package metadata for keras_shufflenet."""

import pathlib
import re

import setuptools

HERE = pathlib.Path(__file__).parent
VERSION = re.search(
    r'__version__ = "([^"]+)"',
    (HERE / "keras_shufflenet" / "version.py").read_text(),
).group(1)

setuptools.setup(
    name="keras_shufflenet",
    version=VERSION,
    description=(
        "ShuffleNet v1 (Zhang et al., 2017) for Keras 3: the model family, "
        "ImageNet training recipes and TFLite deployment."
    ),
    long_description=(HERE / "README.md").read_text(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    packages=setuptools.find_packages(include=["keras_shufflenet*"]),
    python_requires=">=3.10",
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15",
        # tensorflow-model-optimization 0.8.1 ([qat]) pins absl-py 1.x.
        "absl-py>=1.2",
        "numpy",
        # Input pipelines: TFDS sources, and the quickstart's digits.
        "tensorflow-datasets>=4.9",
        "scikit-learn>=1.3",
        # Training curves and latency plots.
        "matplotlib>=3.7",
        # TFLite/LiteRT runtime for verification and benchmarks.
        "ai-edge-litert>=2.0",
    ],
    extras_require={
        # The LiteRT quantizer, an alternative to the converter's int8.
        "quantizer": ["ai-edge-quantizer==0.10.0"],
        # Training on Keras' JAX backend (CPU build; install jax[cuda12] or
        # jax[tpu] on accelerators) with Orbax checkpoints.
        "jax": ["jax==0.10.2", "orbax-checkpoint==0.12.8"],
        # Quantization-aware training: tfmot 0.8.1 runs on Keras 2, so the
        # model's tf_keras twin trains (keras_shufflenet.qat).
        "qat": ["tf_keras==2.21.0", "tensorflow-model-optimization==0.8.1"],
        "test": [
            # pytest 9.2 drops xdist's loadgroup grouping silently
            # (pytest-xdist issue #1386); pyproject.toml relies on it.
            "pytest>=8,<9.2",
            "pytest-xdist>=3",
            "pillow",
            # The sources' networks in PyTorch, which the checkpoint tests
            # compare against (the package reads checkpoints without it).
            # 2.13.0 is the CPU build.
            "torch==2.13.0",
            # The model family and the training recipe on Keras' JAX
            # backend (CPU build), as the [jax] extra.
            "jax==0.10.2",
            "orbax-checkpoint==0.12.8",
            "ai-edge-quantizer==0.10.0",
            # Quantization-aware training, as the [qat] extra.
            "tf_keras==2.21.0",
            "tensorflow-model-optimization==0.8.1",
            # .ci/run lints with the configuration in pyproject.toml.
            "ruff>=0.15",
        ],
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Framework :: Keras",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
