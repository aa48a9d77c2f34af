"""The semi-supervised VAE M2 of Kingma, Rezende, Mohamed & Welling (2014) as a Pyro program.

.. math::

    p(x, y, z) = p(y)\\, p(z)\\, p(x \\mid y, z), \\qquad
    q(y, z \\mid x) = q(y \\mid x)\\, q(z \\mid x, y),

with y a class (a uniform p(y) over C classes), z a style. A labelled image observes y; for an
unlabelled one the guide's y is summed out by enumeration (``TraceEnum_ELBO``), so its ELBO is

.. math::

    \\mathcal U(x) = \\sum_y q(y \\mid x)\\, \\mathcal L(x, y) + \\mathcal H[q(y \\mid x)]
    \\le \\log p(x),

and the classifier q(y|x) also learns from the labels directly, through the extra term
``alpha * -log q(y | x)`` of the labelled images (the paper's alpha; Pyro's
``examples/vae/ss_vae_M2.py`` calls it the auxiliary loss). ``model(x)`` and ``guide(x)`` with no
labels are the marginal model of the images, so every estimator of log p(x) applies: it sums y
out of the model and takes q(z|x) as the mixture over y (:mod:`pyro_vae.program`).

Built from the project's parts: the encoder nets (``arch``) for q(y|x) and for the features of
q(z|x, y), a decoder net over [z, one-hot y] under any likelihood, the standard normal p(z).
"""

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.infer import Trace_ELBO, TraceEnum_ELBO
from torch import nn

from .nets import mlp
from .protocol import CodeViews
from .vae import _scaled

__all__ = ["SemiSupervisedVAE"]


def _loss(elbo, *args, **kwargs):
    """``elbo``'s differentiable loss; a plain number where no gradient is wanted (a test loss
    under ``torch.no_grad``, where TraceEnum_ELBO refuses to make a differentiable one)."""
    if torch.is_grad_enabled():
        return elbo.differentiable_loss(*args, **kwargs)
    return torch.tensor(elbo.loss(*args, **kwargs))


def _join(a, b):
    """``cat([a, b], -1)`` after broadcasting their batch dims (enumeration adds some to b)."""
    batch = torch.broadcast_shapes(a.shape[:-1], b.shape[:-1])
    return torch.cat([a.expand(batch + a.shape[-1:]), b.expand(batch + b.shape[-1:])], -1)


class SemiSupervisedVAE(CodeViews, nn.Module):
    """M2, with sample sites ``"y"``, ``"z"`` (latent) and ``"x"`` (observed) in
    ``plate("data")``; ``batch_fields = ("x", "y")``, labels -1 where absent.

    :param classifier: an encoder net ``x -> (*batch, num_classes)`` logits of q(y|x).
    :param features: an encoder net ``x -> (*batch, hidden_dim)``, the image's part of q(z|x, y).
    :param likelihood: a likelihood whose decoder takes ``latent_dim + num_classes`` inputs,
        [z, one-hot y].
    :param prior: p(z) (``prior()`` a distribution over ``(latent_dim,)``).
    :param alpha: the weight of -log q(y|x) on labelled images (the paper's alpha).
    """

    batch_fields = ("x", "y")
    max_plate_nesting = 1

    def __init__(self, classifier, features, likelihood, prior, *, num_classes, latent_dim,
                 hidden_dim, activation="silu", alpha=50.0, min_scale=1e-3):
        super().__init__()
        self.classifier, self.features = classifier, features
        self.likelihood, self.prior = likelihood, prior
        self.num_classes, self.latent_dim, self.alpha = num_classes, latent_dim, alpha
        self.min_scale = min_scale
        # q(z | x, y) from the image's features and the one-hot class: (H + C) -> 2 latent
        self.z_head = mlp(hidden_dim + num_classes, hidden_dim, 2 * latent_dim, 1, activation)
        self.register_buffer("class_logits", torch.zeros(num_classes))  # p(y) uniform
        self._elbo = Trace_ELBO(max_plate_nesting=1)  # labelled: y observed, nothing to sum
        self._enum_elbo = TraceEnum_ELBO(max_plate_nesting=1)  # unlabelled: y summed out

    def _onehot(self, y, like):
        return F.one_hot(y, self.num_classes).to(like.dtype)

    def classify(self, x):
        """q(y | x): a Categorical over the classes, batch ``x.shape[:-3]``."""
        return dist.Categorical(logits=self.classifier(x))

    def style_posterior(self, x, y):
        """q(z | x, y), a diagonal Gaussian; y may carry enumeration dims."""
        h = F.silu(self.features(x))  # (*batch, H)
        loc, raw = self.z_head(_join(h, self._onehot(y, h))).chunk(2, -1)
        return dist.Normal(loc, F.softplus(raw) + self.min_scale).to_event(1)

    def decoder_likelihood(self, z, y):
        """p(x | y, z)."""
        return self.likelihood(_join(z, self._onehot(y, z)))

    def model(self, x, y=None, kl_scale=1.0):
        """p(y) p(z) p(x | y, z); y observed where given (all labelled), else latent."""
        with pyro.plate("data", x.shape[0]):
            with _scaled(kl_scale):
                z = pyro.sample("z", self.prior())
            y = pyro.sample("y", dist.Categorical(logits=self.class_logits), obs=y)
            pyro.sample("x", self.decoder_likelihood(z, y), obs=x)

    def guide(self, x, y=None, kl_scale=1.0):
        """q(y | x) (enumerated, where y is not given) q(z | x, y)."""
        with pyro.plate("data", x.shape[0]):
            if y is None:
                y = pyro.sample("y", self.classify(x), infer={"enumerate": "parallel"})
            with _scaled(kl_scale):
                pyro.sample("z", self.style_posterior(x, y))

    def loss(self, elbo, x, y, kl_scale=1.0):
        """The batch's objective, summed: -ELBO of the labelled images (y observed) plus
        alpha times their -log q(y|x), and -U(x) of the unlabelled ones (y summed out by
        ``TraceEnum_ELBO``). The loop's ``elbo`` is not used: M2's objective is this one."""
        labelled = y >= 0
        total = x.new_zeros(())
        if bool(labelled.any()):
            xl, yl = x[labelled], y[labelled]
            total = total + _loss(self._elbo, self.model, self.guide, xl, yl, kl_scale=kl_scale)
            total = total - self.alpha * self.classify(xl).log_prob(yl).sum()
        if not bool(labelled.all()):
            total = total + _loss(self._enum_elbo, self.model, self.guide, x[~labelled],
                                  kl_scale=kl_scale)
        return total

    # The views of pyro_vae.protocol.CodeViews: the code is the style z of q(z | x, y) at the
    # class q(y|x) finds likeliest; decode(z) draws it as class 0 (decode_class takes any).

    def code_posterior(self, x, num_samples=100):
        return self.style_posterior(x, self.classify(x).probs.argmax(-1))

    def code_prior(self):
        return self.prior()

    def code_likelihood(self, z):
        return self.decoder_likelihood(z, torch.zeros(z.shape[:-1], dtype=torch.long,
                                                      device=z.device))

    @torch.no_grad()
    def reconstruct(self, x):
        y = self.classify(x).probs.argmax(-1)
        return self.decoder_likelihood(self.style_posterior(x, y).mean, y).mean

    @torch.no_grad()
    def decode_class(self, z, y):
        """The likelihood's mean at style ``z`` ``(*batch, latent)`` and class ``y``."""
        return self.decoder_likelihood(z, y).mean

    @torch.no_grad()
    def generate(self, num_samples):
        """Likelihood means at z ~ p(z), y ~ p(y)."""
        z = self.prior().sample((num_samples,))
        y = dist.Categorical(logits=self.class_logits).sample((num_samples,))
        return self.decode_class(z, y)

    @torch.no_grad()
    def accuracy(self, x, y, batch_size=1000):
        """The fraction of the labelled images of ``x`` whose likeliest class under q(y|x) is
        their label."""
        keep = y >= 0
        x, y = x[keep], y[keep]
        right = sum(int((self.classify(x[i:i + batch_size]).logits.argmax(-1)
                         == y[i:i + batch_size]).sum()) for i in range(0, len(x), batch_size))
        return right / max(len(x), 1)
