"""Plain torch networks: tensors in, tensors out. No distributions here; heads live elsewhere.

An encoder net maps images ``(*batch, C, H, W)`` to features ``(*batch, out_dim)``; a decoder net
maps codes ``(*batch, latent_dim)`` to images ``(*batch, C, H, W)`` (logits or means, as the
likelihood head decides). ``*batch`` may be several dimensions, e.g. ``(num_samples, batch)``
under a vectorized particle plate: the nets flatten and restore it.

The VAE, the deterministic autoencoder and the denoising autoencoder are all built from these
same classes, so that comparisons between them are fair. Every net takes ``depth`` (hidden
layers of width ``hidden_dim``) and ``activation`` (a name from :data:`ACTIVATIONS`).
"""

import math

from torch import nn

from .errors import ConfigError, lookup

__all__ = [
    "ACTIVATIONS",
    "NETS",
    "ConvDecoderNet",
    "ConvEncoderNet",
    "MLPDecoderNet",
    "MLPEncoderNet",
    "mlp",
]

#: name -> activation module class
ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU, "elu": nn.ELU,
               "softplus": nn.Softplus, "tanh": nn.Tanh}


def mlp(in_dim, hidden_dim, out_dim, depth=1, activation="silu"):
    """``Linear(in, hidden) -> act -> ... (depth hidden layers) -> Linear(hidden, out)``.

    At ``depth=1`` the layers are ``net.0`` and ``net.2``, the layout of every earlier run's
    checkpoint, which therefore still loads.
    """
    act = lookup(ACTIVATIONS, "activation", activation)
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ConfigError(f"depth must be a positive number of hidden layers, got {depth!r}")
    dims = [in_dim] + [hidden_dim] * depth
    layers = []
    for a, b in zip(dims[:-1], dims[1:]):
        layers += [nn.Linear(a, b), act()]
    return nn.Sequential(*layers, nn.Linear(dims[-1], out_dim))


class MLPEncoderNet(nn.Module):
    """``x -> flatten -> Linear(D, hidden) -> act -> ... -> Linear(hidden, out_dim)``, ``depth``
    hidden layers."""

    def __init__(self, image_shape, hidden_dim, out_dim, depth=1, activation="silu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = mlp(math.prod(self.image_shape), hidden_dim, out_dim, depth, activation)

    def forward(self, x):
        # (*batch, C, H, W) -> (*batch, C*H*W) -> (*batch, out_dim)
        return self.net(x.flatten(-len(self.image_shape)))


class MLPDecoderNet(nn.Module):
    """``z -> Linear(latent, hidden) -> act -> ... -> Linear(hidden, D) -> reshape to the
    image``, ``depth`` hidden layers."""

    def __init__(self, latent_dim, hidden_dim, image_shape, depth=1, activation="silu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        self.net = mlp(latent_dim, hidden_dim, math.prod(self.image_shape), depth, activation)

    def forward(self, z):
        # (*batch, latent) -> (*batch, C*H*W) -> (*batch, C, H, W)
        return self.net(z).unflatten(-1, self.image_shape)


def _check_conv_shape(image_shape):
    c, h, w = image_shape
    if h % 4 or w % 4:
        raise ConfigError(
            f"the conv networks halve the image twice, so height and width must be multiples of 4; "
            f"got {h}x{w}: use --arch mlp or pad the images"
        )


class ConvEncoderNet(nn.Module):
    """Two stride-2 4x4 convolutions (32, 64 channels), then ``depth`` hidden linear layers and
    ``Linear(hidden, out_dim)``; ``activation`` after every layer but the last.

    28x28 -> 14x14 -> 7x7; the image sides must be multiples of 4.
    """

    def __init__(self, image_shape, hidden_dim, out_dim, depth=1, activation="silu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        _check_conv_shape(self.image_shape)
        c, h, w = self.image_shape
        act = lookup(ACTIVATIONS, "activation", activation)
        self.net = nn.Sequential(
            nn.Conv2d(c, 32, 4, stride=2, padding=1),
            act(),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),
            act(),
            nn.Flatten(),
            *mlp(64 * (h // 4) * (w // 4), hidden_dim, out_dim, depth, activation),
        )

    def forward(self, x):
        batch = x.shape[:-3]
        out = self.net(x.reshape(-1, *self.image_shape))  # (prod(batch), out_dim)
        return out.reshape(*batch, -1)


class ConvDecoderNet(nn.Module):
    """The mirror image of :class:`ConvEncoderNet`: ``depth`` hidden linear layers, a linear
    layer to 64 maps of a quarter of the image's sides, then two 4x4 stride-2 transposed
    convolutions (64 -> 32 -> C channels)."""

    def __init__(self, latent_dim, hidden_dim, image_shape, depth=1, activation="silu"):
        super().__init__()
        self.image_shape = tuple(image_shape)
        _check_conv_shape(self.image_shape)
        c, h, w = self.image_shape
        act = lookup(ACTIVATIONS, "activation", activation)
        self.net = nn.Sequential(
            *mlp(latent_dim, hidden_dim, 64 * (h // 4) * (w // 4), depth, activation),
            act(),
            nn.Unflatten(1, (64, h // 4, w // 4)),
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),
            act(),
            nn.ConvTranspose2d(32, c, 4, stride=2, padding=1),
        )

    def forward(self, z):
        batch = z.shape[:-1]
        out = self.net(z.reshape(-1, z.shape[-1]))  # (prod(batch), C, H, W)
        return out.reshape(*batch, *self.image_shape)


#: name -> (encoder net class, decoder net class)
NETS = {"mlp": (MLPEncoderNet, MLPDecoderNet), "conv": (ConvEncoderNet, ConvDecoderNet)}
