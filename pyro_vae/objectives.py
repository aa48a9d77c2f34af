"""Training objectives beyond Pyro's own ``differentiable_loss`` ELBOs: the IWAE bound.

Pyro's ``RenyiELBO(alpha=0)`` is the importance-weighted bound (Burda et al., 2016),

.. math::

    \\mathcal{L}_K(x) = \\mathbb{E}_{z_{1:K} \\sim q}\\Big[\\log \\frac1K \\sum_k
        \\frac{p(x, z_k)}{q(z_k \\mid x)}\\Big] \\le \\log p(x),

computed per image (plates shared by every site are kept, the particle dimension is reduced by
logsumexp) and summed over the batch. It offers ``loss`` and ``loss_and_grads`` (which needs
``pyro.param`` sites), but no ``differentiable_loss``. :class:`IWAE` adds one, for
reparameterized guides: autodiff of the logsumexp gives the IWAE gradient
sum_k w~_k grad log w_k, with normalized weights w~.
"""

import math

import torch
from pyro.infer import RenyiELBO
from pyro.infer.util import is_identically_zero

__all__ = ["IWAE"]


class IWAE(RenyiELBO):
    """``RenyiELBO(alpha=0)`` with a ``differentiable_loss``: -sum_n IWAE_K(x_n).

    :param num_particles: K, the importance samples per image (vectorized).
    """

    def __init__(self, num_particles=5, max_plate_nesting=1, vectorize_particles=True):
        # Pyro adds the particle plate's dim only when K > 1: at K = 1 a vectorized plate would
        # land on the data plate's dim, so K = 1 runs unvectorized.
        super().__init__(alpha=0.0, num_particles=num_particles,
                         vectorize_particles=vectorize_particles and num_particles > 1,
                         max_plate_nesting=max_plate_nesting)

    def differentiable_loss(self, model, guide, *args, **kwargs):
        log_weights = []
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            w = 0.0
            for site in model_trace.nodes.values():
                if site["type"] == "sample":
                    w = w + site["log_prob"]
            for site in guide_trace.nodes.values():
                if site["type"] == "sample":
                    if not is_identically_zero(site["score_parts"].score_function):
                        raise NotImplementedError("IWAE here needs a reparameterized guide")
                    w = w - site["log_prob"]
            log_weights.append(w)
        # vectorized: one trace with (K, N) weights; else K traces of (N,) weights
        w = log_weights[0] if self.vectorize_particles else torch.stack(log_weights)
        return -(torch.logsumexp(w, 0) - math.log(self.num_particles)).sum()
