"""Models whose log p(x) and posterior are known exactly, for the estimator tests.

LinearGaussian: z ~ N(0, I_d), x | z ~ N(W z + b, s^2 I_D)  =>  x ~ N(b, W W^T + s^2 I_D); the
posterior is N(mu, Sigma), Sigma = (I + W^T W / s^2)^{-1}, mu = Sigma W^T (x - b) / s^2.

GammaPoisson: rate r ~ Gamma(a, b), counts x_i | r ~ Poisson(r), i = 1..D  =>  the posterior is
Gamma(a + sum x, b + D) and
log p(x) = a log b - log Gamma(a) + log Gamma(a + sum x) - (a + sum x) log(b + D) - sum log x_i!.

GaussianChain: a two-stochastic-layer chain per dimension, z2 ~ N(0, 1), z1 | z2 ~ N(a z2, s1^2),
x | z1 ~ N(c z1, s0^2)  =>  x ~ N(0, c^2 (a^2 + s1^2) + s0^2); the posterior factorizes as
p(z1 | x) p(z2 | z1) (z2 is independent of x given z1), both Gaussian.
"""

import pyro
import pyro.distributions as dist
import torch


class LinearGaussian:
    def __init__(self, latent=2, dim=5, noise=0.7, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.latent, self.dim, self.noise = latent, dim, noise
        self.W = torch.randn(dim, latent, generator=g, dtype=torch.float64)
        self.b = torch.randn(dim, generator=g, dtype=torch.float64)
        self.precision = torch.eye(latent, dtype=torch.float64) + self.W.T @ self.W / noise**2
        self.Sigma = torch.linalg.inv(self.precision)

    def exact_log_px(self, x):
        cov = self.W @ self.W.T + self.noise**2 * torch.eye(self.dim, dtype=torch.float64)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov).log_prob(x)

    def posterior_mean(self, x):
        return (x - self.b) @ self.W @ self.Sigma.T / self.noise**2  # (N, latent)

    def best_diagonal_elbo(self, x):
        """ELBO of the best diagonal Gaussian q*: the posterior mean, variances
        1 / diag(precision); ELBO[q*] = log p(x) - KL(q* || posterior), and
        KL = (sum_i log Lambda_ii - log det Lambda) / 2."""
        kl = 0.5 * (self.precision.diagonal().log().sum() - torch.logdet(self.precision))
        return self.exact_log_px(x) - kl

    def model(self, x, kl_scale=1.0):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(self.latent, dtype=x.dtype), 1.0)
                            .to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def exact_guide(self, x, kl_scale=1.0):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(self.posterior_mean(x),
                                                     covariance_matrix=self.Sigma))

    def poor_guide(self, x, kl_scale=1.0):
        # right mean direction, shrunk; too wide, diagonal: an imperfect but safe proposal
        scale = 1.5 * self.Sigma.diagonal().sqrt()
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.8 * self.posterior_mean(x), scale).to_event(1))

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn(n, self.latent, generator=g, dtype=torch.float64)
        eps = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return z @ self.W.T + self.b + self.noise * eps


class GammaPoisson:
    """A positive latent (a Poisson rate) with a LogNormal guide of the wrong width."""

    def __init__(self, a=2.0, b=0.5, dim=6):
        self.a, self.b, self.dim = a, b, dim

    def exact_log_px(self, x):
        s, a, b, d = x.sum(-1), self.a, self.b, self.dim
        return (a * torch.log(torch.tensor(b, dtype=x.dtype)) - torch.lgamma(torch.tensor(a))
                + torch.lgamma(a + s) - (a + s) * torch.log(torch.tensor(b + d, dtype=x.dtype))
                - torch.lgamma(x + 1).sum(-1))

    def model(self, x):
        with pyro.plate("data", x.shape[0]):
            rate = pyro.sample("rate", dist.Gamma(torch.tensor(self.a, dtype=x.dtype), self.b))
            pyro.sample("x", dist.Poisson(rate.unsqueeze(-1).expand(rate.shape + (self.dim,)))
                        .to_event(1), obs=x)

    def guide(self, x):
        # log-rate off the posterior's centre and too narrow: importance sampling suffers
        mean = (self.a + x.sum(-1)) / (self.b + self.dim)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("rate", dist.LogNormal(mean.log() + 0.2, 0.15))

    def data(self, n, seed=1):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            rate = dist.Gamma(torch.tensor(self.a, dtype=torch.float64), self.b).sample((n,))
            return dist.Poisson(rate[:, None].expand(n, self.dim)).sample()


def _normal(loc, scale):
    return dist.Normal(loc, scale).to_event(1)


class GaussianChain:
    """The pieces of a :class:`~pyro_vae.hierarchical.TwoLayerVAE` for the chain z2 -> z1 -> x
    (module doc), in float64, ``dim`` independent dimensions; ``guide_error`` shifts and
    widens both guide factors (0: the exact posterior)."""

    def __init__(self, dim=3, a=1.5, s1=0.6, c=2.0, s0=0.8):
        self.dim, self.a, self.s1, self.c, self.s0 = dim, a, s1, c, s0
        v1 = a**2 + s1**2  # marginal variance of z1
        self.prec1 = 1 / v1 + c**2 / s0**2  # of p(z1 | x)
        self.prec2 = 1 + a**2 / s1**2  # of p(z2 | z1)

    def exact_log_px(self, x):
        var = self.c**2 * (self.a**2 + self.s1**2) + self.s0**2
        return dist.Normal(0.0, var**0.5).log_prob(x).sum(-1)

    def prior(self):
        return _normal(torch.zeros(self.dim, dtype=torch.float64), 1.0)

    def transition(self, z2):
        return _normal(self.a * z2, self.s1)

    def likelihood(self, z1):
        return _normal(self.c * z1, self.s0)

    def encoder(self, guide_error=0.0):
        def q1(x):
            mean = self.c * x / self.s0**2 / self.prec1
            return _normal(mean + guide_error, (1 + guide_error) / self.prec1**0.5)
        return q1

    def upper_encoder(self, guide_error=0.0):
        def q2(z1):
            mean = self.a * z1 / self.s1**2 / self.prec2
            return _normal(mean - guide_error, (1 + guide_error) / self.prec2**0.5)
        return q2

    def data(self, n, seed=1):
        g = torch.Generator().manual_seed(seed)
        z2 = torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        z1 = self.a * z2 + self.s1 * torch.randn(n, self.dim, generator=g, dtype=torch.float64)
        return self.c * z1 + self.s0 * torch.randn(n, self.dim, generator=g, dtype=torch.float64)


class GaussianMixture:
    """A discrete latent: y ~ Categorical(pi) over C components, z | y ~ N(mu_y, t^2 I_d),
    x | z ~ N(W z + b, s^2 I_D)  =>  x ~ sum_y pi_y N(W mu_y + b, t^2 W W^T + s^2 I_D).

    Given x, p(y | x) is proportional to pi_y times that component's density, and
    p(z | x, y) = N(m_y, S), S = (I / t^2 + W^T W / s^2)^{-1},
    m_y = S (mu_y / t^2 + W^T (x - b) / s^2), the same S for every y.
    """

    def __init__(self, components=10, latent=2, dim=3, spread=3.0, t=0.5, noise=0.6, seed=0):
        g = torch.Generator().manual_seed(seed)
        f = dict(generator=g, dtype=torch.float64)
        self.C, self.latent, self.dim, self.t, self.noise = components, latent, dim, t, noise
        self.logits = torch.randn(components, **f)
        self.mu = spread * torch.randn(components, latent, **f)
        self.W = torch.randn(dim, latent, **f)
        self.b = torch.randn(dim, **f)
        eye = torch.eye(latent, dtype=torch.float64)
        self.S = torch.linalg.inv(eye / t**2 + self.W.T @ self.W / noise**2)

    def _components(self):
        cov = self.t**2 * self.W @ self.W.T + self.noise**2 * torch.eye(self.dim, dtype=torch.float64)
        return dist.MultivariateNormal(self.mu @ self.W.T + self.b, covariance_matrix=cov)

    def exact_log_px(self, x):
        lp = self._components().log_prob(x.unsqueeze(-2))  # (N, C)
        return torch.logsumexp(lp + self.logits.log_softmax(-1), -1)

    def posterior_y(self, x):
        """log p(y | x), (N, C)."""
        lp = self._components().log_prob(x.unsqueeze(-2)) + self.logits.log_softmax(-1)
        return lp - torch.logsumexp(lp, -1, keepdim=True)

    def posterior_means(self, x):
        """m_y for every y, (N, C, d)."""
        r = self.mu / self.t**2 + ((x - self.b) @ self.W / self.noise**2).unsqueeze(-2)
        return r @ self.S.T

    def model(self, x, enumerate="parallel"):
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=self.logits),
                            infer={"enumerate": enumerate} if enumerate else {})
            z = pyro.sample("z", dist.Normal(self.mu[y], self.t).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.noise).to_event(1), obs=x)

    def unmarked_model(self, x):
        """y not marked for enumeration: a guide without y leaves it to no one."""
        return self.model(x, enumerate=None)

    def gaussian_guide(self, x, widen=1.3):
        """One Gaussian over z, no y: moment-matched to the posterior mixture, widened."""
        w = self.posterior_y(x).exp()  # (N, C)
        m = self.posterior_means(x)  # (N, C, d)
        mean = (w.unsqueeze(-1) * m).sum(-2)
        spread = (w.unsqueeze(-1).unsqueeze(-1) * torch.einsum(
            "nci,ncj->ncij", m - mean.unsqueeze(-2), m - mean.unsqueeze(-2))).sum(-3)
        cov = widen**2 * (self.S + spread)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.MultivariateNormal(mean, covariance_matrix=cov))

    def mixture_guide(self, x, enumerate="parallel", error=0.0):
        """q(y | x) q(z | x, y): the exact posterior at ``error`` 0; otherwise q(y | x) tempered
        and q(z | x, y) shifted and widened. ``enumerate``: marked for summing out, or None
        (sampled)."""
        logits = self.posterior_y(x) * (1 - error)
        with pyro.plate("data", x.shape[0]):
            y = pyro.sample("y", dist.Categorical(logits=logits),
                            infer={"enumerate": enumerate} if enumerate else {})
            # y is (K, N) when drawn, or (C, 1, 1) when enumerated: pick m_y by a one-hot sum
            onehot = torch.nn.functional.one_hot(y, self.C).to(x.dtype).unsqueeze(-1)
            loc = (onehot * self.posterior_means(x)).sum(-2)  # (..., N, d)
            pyro.sample("z", dist.MultivariateNormal(
                loc + error, covariance_matrix=(1 + error)**2 * self.S))

    def data(self, n, seed=1):
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            y = dist.Categorical(logits=self.logits).sample((n,))
            z = self.mu[y] + self.t * torch.randn(n, self.latent, dtype=torch.float64)
            return z @ self.W.T + self.b + self.noise * torch.randn(n, self.dim,
                                                                     dtype=torch.float64)
