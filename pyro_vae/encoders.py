"""Posteriors q(z|x): modules whose ``forward(x)`` returns a distribution over ``(latent_dim,)``.

For images ``(*batch, C, H, W)`` the distribution has ``batch_shape == batch`` and supports
``rsample`` (reparameterized), so Trace_ELBO's gradients are pathwise. Each class says how wide
its encoder net's output must be (``out_dim(latent_dim)``).
"""

import torch
import torch.nn.functional as F
from torch import nn

import pyro.distributions as dist
import pyro.distributions.transforms as T

__all__ = ["ENCODERS", "DiagonalNormalEncoder", "FlowEncoder", "FullCovarianceEncoder"]


class DiagonalNormalEncoder(nn.Module):
    """q(z|x) = N(z; mu(x), diag(sigma(x)^2)), sigma = softplus(s(x)) + ``min_scale``.

    ``net`` maps ``(*batch, C, H, W)`` to ``(*batch, 2 * latent_dim)``: the first half is mu, the
    second half s. The floor keeps log q finite when the net drives s to -inf.
    """

    def __init__(self, net, latent_dim, min_scale=1e-3):
        super().__init__()
        self.net = net
        self.latent_dim = latent_dim
        self.min_scale = min_scale

    @staticmethod
    def out_dim(latent_dim):
        return 2 * latent_dim

    def forward(self, x):
        loc, raw_scale = self.net(x).chunk(2, dim=-1)  # 2 x (*batch, latent_dim)
        return dist.Normal(loc, F.softplus(raw_scale) + self.min_scale).to_event(1)


class FullCovarianceEncoder(nn.Module):
    """q(z|x) = N(z; mu(x), L(x) L(x)^T), L lower-triangular with diagonal softplus(.) + floor.

    The net's output holds mu (D values), the diagonal (D) and the strict lower triangle
    (D(D-1)/2), in that order.
    """

    def __init__(self, net, latent_dim, min_scale=1e-3):
        super().__init__()
        self.net = net
        self.latent_dim = latent_dim
        self.min_scale = min_scale
        rows, cols = torch.tril_indices(latent_dim, latent_dim, offset=-1)
        self.register_buffer("rows", rows)
        self.register_buffer("cols", cols)

    @staticmethod
    def out_dim(latent_dim):
        return 2 * latent_dim + latent_dim * (latent_dim - 1) // 2

    def forward(self, x):
        d = self.latent_dim
        out = self.net(x)
        loc, raw_diag, lower = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        diag = F.softplus(raw_diag) + self.min_scale
        scale_tril = torch.diag_embed(diag)  # (*batch, D, D)
        scale_tril[..., self.rows, self.cols] = lower
        return dist.MultivariateNormal(loc, scale_tril=scale_tril)


class FlowEncoder(nn.Module):
    """q(z|x): the diagonal Normal of :class:`DiagonalNormalEncoder` pushed through
    ``num_flows`` inverse autoregressive flows (Kingma et al., 2016), shared across images:
    ``z = f_K(...f_1(z_0))``, ``log q(z|x) = log q_0(z_0|x) - sum_k log |det J_{f_k}|``.

    IAF samples in one pass and scores its own samples from a cache, which is all that SVI and
    the importance-weighted estimators ask of a guide. Its mean has no closed form.
    """

    def __init__(self, net, latent_dim, num_flows=2, hidden_dim=None, min_scale=1e-3):
        super().__init__()
        self.base = DiagonalNormalEncoder(net, latent_dim, min_scale)
        hidden = hidden_dim or 2 * latent_dim
        self.flows = nn.ModuleList(
            T.affine_autoregressive(latent_dim, hidden_dims=[hidden]) for _ in range(num_flows)
        )

    @staticmethod
    def out_dim(latent_dim):
        return 2 * latent_dim

    def forward(self, x):
        return dist.TransformedDistribution(self.base(x), list(self.flows))


#: name -> class taking (net, latent_dim); ``cls.out_dim(latent_dim)`` sizes the net.
ENCODERS = {
    "diagonal": DiagonalNormalEncoder,
    "full": FullCovarianceEncoder,
    "flow": FlowEncoder,
}
