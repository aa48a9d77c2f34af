"""The latent space of any of the models: codes of a whole dataset, straight lines between codes.

Works for the VAE and the autoencoders alike, through the views they share: ``encode(x)`` (the
posterior mean, or the code) and ``decode(z)`` (the likelihood's mean).
"""

import torch

__all__ = ["batched", "class_pairs", "interpolate"]


@torch.no_grad()
def batched(fn, x, batch_size=1000):
    """``fn`` applied to ``x`` in chunks of ``batch_size`` along the first dim, concatenated:
    e.g. ``batched(model.encode, x_test)`` -> ``(N, latent_dim)`` without one huge pass."""
    return torch.cat([fn(xb) for xb in x.split(batch_size)])


def class_pairs(labels, num_pairs=3):
    """Index pairs ``(i, j)`` of the first images of classes (0, 1), (2, 3), ... among those
    present in ``labels`` ``(N,)``: endpoints for interpolations between different classes.
    With fewer than two classes (one class, or no labels), pairs of consecutive images
    (0, 1), (2, 3), ... instead; a single image is paired with itself. Never empty for N >= 1."""
    firsts = {}
    for i, label in enumerate(labels.tolist()):
        firsts.setdefault(label, i)
    classes = sorted(firsts)
    pairs = [(firsts[a], firsts[b]) for a, b in zip(classes[0::2], classes[1::2])][:num_pairs]
    if pairs or len(labels) == 0:
        return pairs
    n = len(labels)
    return [(i, i + 1) for i in range(0, n - 1, 2)][:num_pairs] or [(0, 0)]


@torch.no_grad()
def interpolate(model, x_a, x_b, steps=9):
    """Decoded codes along the straight line from the code of ``x_a`` to that of ``x_b``
    (single images ``(C, H, W)``): ``decode((1 - t) z_a + t z_b)`` for ``steps`` values of t in
    [0, 1], shape ``(steps, C, H, W)``; the ends are the two reconstructions."""
    z_a, z_b = model.encode(x_a[None]), model.encode(x_b[None])  # (1, latent_dim) each
    t = torch.linspace(0, 1, steps, device=z_a.device)[:, None]  # (steps, 1)
    return model.decode((1 - t) * z_a + t * z_b)
