"""The model protocol: what a model must offer to be trained, evaluated and drawn by the library.

**Trained and evaluated** (:func:`pyro_vae.train.fit`, every estimator): a Pyro ``model`` and
``guide`` taking the same arguments, the batch fields the model names in ``batch_fields``
(``("x",)``: the images alone; ``("x", "y")``: images and labels, -1 where a label is
absent), with the data plate ``"data"`` over their first dimension, and
``max_plate_nesting``, the number of plates the model nests. Training may pass ``kl_scale``
(the KL weight beta) as a keyword argument; estimators never do. A user's own object offering
only ``model`` and ``guide`` works with the estimators as it is, and with ``fit``, which takes
``batch_fields = ("x",)`` and ``max_plate_nesting = 1`` where they are absent.

**Drawn by the scripts** (figures, the latent-space views; :class:`CodeViews`): ``encode(x)``
(an image's code, ``(N, latent_dim)``), ``decode(z)`` (the likelihood's mean at a code),
``reconstruct(x)`` and ``generate(n)`` (decoder means at prior draws), and ``likelihood``,
the module whose ``check_data`` refuses data outside its support.

**Its own objective** (optional): ``loss(elbo, *fields, kl_scale=1.0)``, the batch's objective
summed over it, where it is not ``elbo.differentiable_loss(model, guide, *fields)`` (M2 adds a
classification term and sums its unlabelled images' class out).

:class:`CodeViews` gives those views to a model from three of its parts, so that a new model
writes its Pyro program and says what its code is, nothing more.
"""

import torch

from .errors import ModelError

__all__ = ["DEFAULT_FIELDS", "CodeViews", "batch_fields", "check_model", "mean_of",
           "model_inputs"]

DEFAULT_FIELDS = ("x",)  # the batch fields of a model that declares none: the images alone
_TRAINED = ("model", "guide")
_DRAWN = ("encode", "decode", "reconstruct", "generate", "likelihood")


def mean_of(d, num_samples=100):
    """The mean of the distribution ``d``, or the average of ``num_samples`` draws where it has
    no closed form (e.g. a flow)."""
    try:
        return d.mean
    except NotImplementedError:
        return d.sample((num_samples,)).mean(0)


def check_model(model, *, drawn=False, what="the model"):
    """Refuse, with a one-line :class:`ModelError`, an object that lacks what the protocol asks
    of a model to be trained and evaluated (with ``drawn``, also to be drawn by the scripts)."""
    needed = _TRAINED + (_DRAWN if drawn else ())
    missing = [name for name in needed if not hasattr(model, name)]
    if missing:
        raise ModelError(f"{what} ({type(model).__name__}) has no {missing[0]!r}: a model "
                         f"offers {', '.join(needed)} (see pyro_vae.protocol)")
    fields = batch_fields(model)
    if not fields or fields[0] != "x" or not all(isinstance(f, str) for f in fields):
        raise ModelError(f"{what}'s batch_fields {fields!r} must be names, the images 'x' "
                         "first")
    return model


def batch_fields(model):
    """The names of the batch fields ``model`` and ``guide`` take, in order."""
    return tuple(getattr(model, "batch_fields", DEFAULT_FIELDS))


def model_inputs(model, batch):
    """The positional arguments of ``model.model`` and ``model.guide`` for ``batch``: the
    images (a tensor), or the model's ``batch_fields`` of a dict of aligned tensors."""
    fields = batch_fields(model)
    if not isinstance(batch, dict):
        if fields != DEFAULT_FIELDS:
            raise ModelError(f"the model takes {', '.join(fields)} but the data hold images "
                             "alone; pass a dict of aligned tensors with those keys")
        return (batch,)
    missing = [f for f in fields if f not in batch]
    if missing:
        raise ModelError(f"the model takes {missing[0]!r} but the batches hold only "
                         f"{', '.join(batch)}; load data that have it")
    return tuple(batch[f] for f in fields)


class CodeViews:
    """The views the scripts draw, for a model whose code has a posterior, a prior and a way
    down to the image. A subclass (also an ``nn.Module``) defines:

    - ``code_posterior(x)``: q(code | x), whose mean is the image's code;
    - ``code_prior()``: p(code);
    - ``code_likelihood(code)``: the distribution of the image given the code (its mean is
      the decoding; a model with layers between takes the mean path down);

    and inherits ``encode``, ``decode``, ``reconstruct`` and ``generate``; a model may override
    any of them (the two-layer VAE reconstructs from its bottom layer).
    """

    batch_fields = DEFAULT_FIELDS

    @torch.no_grad()
    def encode(self, x, num_samples=100):
        """The code's posterior mean, shape ``(N, latent_dim)``; a Monte-Carlo average of
        ``num_samples`` draws where it has no closed-form mean (e.g. a flow)."""
        return mean_of(self.code_posterior(x, num_samples), num_samples)

    @torch.no_grad()
    def decode(self, z):
        """The likelihood's mean at the code ``z``: ``(*z.shape[:-1], *image_shape)``."""
        return self.code_likelihood(z).mean

    @torch.no_grad()
    def reconstruct(self, x):
        """The decoding of the image's code: E_p[x | code = E_q[code | x]]."""
        return self.decode(self.encode(x))

    @torch.no_grad()
    def generate(self, num_samples):
        """Likelihood means at prior draws of the code: ``(num_samples, *image_shape)``."""
        return self.decode(self.code_prior().sample((num_samples,)))
