"""A small digit classifier, and the scores it gives a set of generated images; and the
supervised baseline of a semi-supervised run (:func:`fit_classifier`).

Generated images are judged the way the FID judges them (Heusel et al., 2017), with a classifier
trained here on the real training images instead of an Inception network:

- **confidence**: the mean over images of max_c p(c | x); recognisable digits score near 1;
- **class entropy**: the entropy (nats) of the histogram of predicted classes; log 10 = 2.30 when
  every class is generated equally often, 0 when every sample is the same digit;
- **Frechet distance** between Gaussians fitted to classifier features of the samples and of
  held-out real images: ``|mu_1 - mu_2|^2 + tr(S_1 + S_2 - 2 (S_1^{1/2} S_2 S_1^{1/2})^{1/2})``.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

__all__ = ["DigitClassifier", "SampleScores", "fit_classifier", "frechet_distance",
           "score_samples", "train_classifier"]


class DigitClassifier(nn.Module):
    """Two 3x3 conv blocks with 2x2 max-pooling (32, 64 channels), a 128-unit feature layer, and
    a linear layer to ``num_classes`` logits. Works on any image size divisible by 4."""

    def __init__(self, image_shape=(1, 28, 28), num_classes=10, feature_dim=128):
        super().__init__()
        c, h, w = image_shape
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * (h // 4) * (w // 4), feature_dim), nn.ReLU(),
        )
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x):
        """Logits ``(N, num_classes)`` for images ``(N, C, H, W)``."""
        return self.head(self.features(x))


def train_classifier(x, y, *, epochs=3, batch_size=128, lr=1e-3, seed=0, progress=True):
    """Train a :class:`DigitClassifier` on images ``x`` (N, C, H, W) in [0, 1] and labels ``y``
    with Adam and cross-entropy; returns it in eval mode."""
    gen = torch.Generator(device=x.device).manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        clf = DigitClassifier(tuple(x.shape[1:]), int(y.max()) + 1).to(x.device)
    opt = torch.optim.Adam(clf.parameters(), lr=lr)
    clf.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(x), generator=gen, device=x.device)
        steps = range(0, len(x), batch_size)
        for start in tqdm(steps, desc=f"classifier epoch {epoch + 1}/{epochs}", leave=False,
                          disable=not progress):
            idx = perm[start : start + batch_size]
            loss = F.cross_entropy(clf(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return clf.eval()


def _moments(features):
    features = features.double()
    mu = features.mean(0)
    centred = features - mu
    return mu, centred.T @ centred / (len(features) - 1)


def frechet_distance(features_a, features_b):
    """Frechet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``.

    tr((S_a^{1/2} S_b S_a^{1/2})^{1/2}) = tr((S_a S_b)^{1/2}), computed from the eigenvalues of
    the symmetric PSD matrix S_a^{1/2} S_b S_a^{1/2}, so no non-symmetric matrix root is needed.
    """
    mu_a, cov_a = _moments(features_a)
    mu_b, cov_b = _moments(features_b)
    evals, evecs = torch.linalg.eigh(cov_a)
    root_a = evecs @ torch.diag(evals.clamp(min=0).sqrt()) @ evecs.T
    middle = root_a @ cov_b @ root_a
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    value = (mu_a - mu_b).square().sum() + cov_a.trace() + cov_b.trace() - 2 * trace_root
    return float(value.clamp(min=0))


@dataclass
class SampleScores:
    confidence: float  # mean max-class probability
    class_entropy: float  # entropy of the predicted-class histogram, nats (max log 10)
    frechet: float  # Frechet distance to the real images' features
    class_counts: list  # how many images were predicted as each class


@torch.no_grad()
def score_samples(classifier, images, real_images, batch_size=1000):
    """Score ``images`` (N, C, H, W) in [0, 1] against ``real_images`` with ``classifier``."""

    def run(x):
        feats, probs = [], []
        for xb in x.split(batch_size):
            f = classifier.features(xb)
            feats.append(f)
            probs.append(classifier.head(f).softmax(-1))
        return torch.cat(feats), torch.cat(probs)

    feats, probs = run(images)
    real_feats, _ = run(real_images)
    counts = torch.bincount(probs.argmax(-1), minlength=probs.shape[-1])
    freq = counts.double() / counts.sum()
    freq = freq[freq > 0]
    entropy = (freq * freq.reciprocal().log()).sum()  # sum_c f_c log(1 / f_c) >= 0
    return SampleScores(
        confidence=float(probs.max(-1).values.mean()),
        class_entropy=float(entropy),
        frechet=frechet_distance(feats, real_feats),
        class_counts=counts.tolist(),
    )


def fit_classifier(net, x, y, *, lr, generator, binarize=False, batch_size=100, holdout=0.2,
                   patience=20, max_epochs=2000):
    """The supervised baseline of a semi-supervised run, by a recipe fixed in advance: ``net``
    (images -> class logits) trained with Adam at ``lr`` on cross-entropy over the labelled
    images ``x``, ``y`` alone (with ``binarize``, Bernoulli pixels drawn afresh each epoch).
    First a ``holdout`` of each class (drawn by ``generator``; none of a class of one image)
    is held out, and the epoch after which its accuracy stopped rising for ``patience`` epochs
    is found; then a fresh copy of ``net`` is trained on every labelled image for that many
    epochs. Returns ``(net, epochs)``."""
    fresh = {k: v.detach().clone() for k, v in net.state_dict().items()}
    held = []
    for c in torch.unique(y):
        idx = torch.nonzero(y == c).squeeze(1)
        idx = idx[torch.randperm(len(idx), generator=generator, device=y.device)]
        held.append(idx[: int(round(holdout * len(idx))) if len(idx) > 1 else 0])
    val = torch.cat(held)
    fit_idx = torch.tensor([i for i in range(len(y)) if i not in set(val.tolist())],
                           dtype=torch.long, device=y.device)
    best, best_epoch, epoch = -1.0, 1, 0
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    while val.numel() and epoch - best_epoch < patience and epoch < max_epochs:
        epoch += 1
        _classifier_epoch(net, optimizer, x, y, fit_idx, generator, binarize, batch_size)
        with torch.no_grad():
            net.eval()
            xv = torch.bernoulli(x[val], generator=generator) if binarize else x[val]
            accuracy = (net(xv).argmax(-1) == y[val]).float().mean().item()
        if accuracy > best:
            best, best_epoch = accuracy, epoch
    epochs = best_epoch if val.numel() else patience
    net.load_state_dict(fresh)
    optimizer, every = torch.optim.Adam(net.parameters(), lr=lr), torch.arange(len(y),
                                                                            device=y.device)
    for _ in range(epochs):
        _classifier_epoch(net, optimizer, x, y, every, generator, binarize, batch_size)
    net.eval()
    return net, epochs


def _classifier_epoch(net, optimizer, x, y, idx, generator, binarize, batch_size):
    """One epoch of ``optimizer`` on cross-entropy over the rows ``idx`` of ``x``, ``y``."""
    net.train()
    for rows in idx[torch.randperm(len(idx), generator=generator, device=y.device)].split(
            batch_size):
        xb = torch.bernoulli(x[rows], generator=generator) if binarize else x[rows]
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(xb), y[rows]).backward()
        optimizer.step()
