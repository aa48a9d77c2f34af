"""The digit classifier and the scores it gives generated images."""

import math

import numpy as np
import pytest
import scipy.linalg
import torch

from pyro_vae.classifier import DigitClassifier, frechet_distance, score_samples, train_classifier


def _features(n, d, seed, scale=1.0, shift=0.0):
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g) / math.sqrt(d)
    return (torch.randn(n, d, generator=g) @ mix) * scale + shift


def _scipy_frechet(a, b):
    a, b = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a.T), np.cov(b.T)
    root = scipy.linalg.sqrtm(cov_a @ cov_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


@pytest.mark.parametrize("scale,shift", [(1.0, 0.0), (2.0, 0.5), (0.3, -1.0)])
def test_frechet_distance_matches_scipy_sqrtm(scale, shift):
    a = _features(400, 6, seed=0)
    b = _features(300, 6, seed=1, scale=scale, shift=shift)
    assert frechet_distance(a, b) == pytest.approx(_scipy_frechet(a, b), rel=1e-6, abs=1e-8)


def test_frechet_distance_closed_form_for_isotropic_gaussians():
    # N(mu_a, s_a^2 I) vs N(mu_b, s_b^2 I) in D dims: |mu_a - mu_b|^2 + D (s_a - s_b)^2
    g = torch.Generator().manual_seed(0)
    d, n = 4, 400_000
    a = torch.randn(n, d, generator=g, dtype=torch.float64) * 1.0
    b = torch.randn(n, d, generator=g, dtype=torch.float64) * 2.0 + 3.0
    exact = d * 3.0**2 + d * (2.0 - 1.0) ** 2
    assert frechet_distance(a, b) == pytest.approx(exact, rel=0.01)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


class _FixedClassifier(torch.nn.Module):
    """'Features' are the flattened image; the head reads the class off the first pixel."""

    def features(self, x):
        return x.flatten(1)

    def head(self, f):
        return torch.nn.functional.one_hot(f[:, 0].long(), 10).double() * 50.0


def test_score_samples_counts_classes_and_entropy():
    x = torch.zeros(40, 1, 2, 2, dtype=torch.float64)
    x[:10, 0, 0, 0] = 1  # 10 of class 1, 30 of class 0
    x[:, 0, 1, 1] = torch.linspace(0, 1, 40, dtype=torch.float64)  # some spread in the features
    scores = score_samples(_FixedClassifier(), x, x)
    assert scores.class_counts[:2] == [30, 10] and sum(scores.class_counts) == 40
    assert scores.class_entropy == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert scores.confidence == pytest.approx(1.0)
    assert scores.frechet == pytest.approx(0.0, abs=1e-9)
    same = score_samples(_FixedClassifier(), x[10:], x)
    assert same.class_entropy == 0.0


def test_classifier_learns_mnist_digits(mnist_offline):
    x, y = mnist_offline.x_train, mnist_offline.y_train  # grey levels (binarized per batch)
    clf = train_classifier(x[:3000], y[:3000], epochs=3, progress=False)
    assert isinstance(clf, DigitClassifier) and not clf.training
    with torch.no_grad():
        accuracy = (clf(x[3000:]).argmax(-1) == y[3000:]).float().mean()  # held out
    assert accuracy > 0.9  # chance is 0.1
