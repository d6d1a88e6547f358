"""What the checkpoint tests share: images, a PyTorch model made random in
every weight and batch norm statistic, and logits compared."""

import keras
import numpy as np
import torch

RELATIVE_TOLERANCE = 1e-4


def smooth_images(n, size, seed):
    """RGB images in [0, 255]: coarse colour blobs, different per image."""
    rng = np.random.default_rng(seed)
    coarse = rng.uniform(0, 255, (n, 4, 4, 3))
    reps = -(-size // 4)
    fine = np.repeat(np.repeat(coarse, reps, axis=1), reps, axis=2)
    noise = rng.normal(0, 20, (n, size, size, 3))
    images = fine[:, :size, :size] + noise
    return np.clip(images, 0, 255).astype("float32")


def randomize(model, classifier, calibration, probe):
    """Every weight and BN statistic of `model` random, in a sane range.

    BN statistics start from a calibration batch (so activations stay in
    range and the logits depend on the image) and are then perturbed; the
    classifier is made blind to the pooled features' common part, so that
    different images get different classes.

    Args:
        model: A PyTorch module.
        classifier: Its final `nn.Linear`.
        calibration: An input batch for the statistics.
        probe: Another input batch for the classifier.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.momentum = 1.0  # Running stats := batch stats.
            elif isinstance(module, torch.nn.Linear):
                module.weight.normal_(0, module.in_features**-0.5)
                if module.bias is not None:
                    module.bias.normal_(0, 0.5)
        model.train()(calibration)
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                std = module.running_var.sqrt()
                module.running_mean.add_(0.1 * std * torch.randn_like(std))
                module.running_var.mul_(
                    torch.empty_like(std).uniform_(0.7, 1.4)
                )
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
        captured = []
        hook = classifier.register_forward_hook(
            lambda module, inputs, output: captured.append(inputs[0])
        )
        model.eval()(probe)
        hook.remove()
        mean = captured[0].mean(0)
        weight = classifier.weight
        weight.sub_(torch.outer(weight @ mean, mean) / mean.dot(mean))
    return model


def keras_logits(model, images):
    # Eager: tracing predict() costs seconds per model, more than the math.
    return keras.ops.convert_to_numpy(model(images, training=False))


def relative_difference(model, reference, images, torch_input):
    """Largest |Keras - PyTorch| logit over the largest |PyTorch| one."""
    got = keras_logits(model, images)
    with torch.no_grad():
        expected = reference(torch_input).numpy()
    difference = float(np.max(np.abs(got - expected)))
    return difference / float(np.max(np.abs(expected))), got, expected


def assert_computes_reference(model, reference, images, torch_input, label):
    """The Keras model computes the PyTorch reference's logits to
    `RELATIVE_TOLERANCE` and the same top-1 classes; returns the logits."""
    relative, got, expected = relative_difference(
        model, reference, images, torch_input
    )
    print(f"{label}: {relative:.2g}")
    assert relative <= RELATIVE_TOLERANCE, label
    np.testing.assert_array_equal(got.argmax(-1), expected.argmax(-1))
    return got, expected
