"""Noise models, the AE/DAE losses, their training, and the Gaussian fitted to codes."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyro_vae.autoencoders import DenoisingAutoencoder, fit_code_distribution
from pyro_vae.build import build_autoencoder
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.noise import NOISES, GaussianNoise, MaskingNoise, SaltAndPepperNoise, make_noise, psnr
from pyro_vae.train import NonFiniteLossError, evaluate_autoencoder, fit_autoencoder

from conftest import tiny_images

N = 200_000  # pixels per statistic: standard errors ~1e-3


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_gaussian_noise_has_its_sigma_and_is_clipped():
    x = torch.full((N // 784, 1, 28, 28), 0.5)
    noisy = GaussianNoise(0.1)(x, _gen())
    assert abs(float((noisy - x).mean())) < 3e-3
    assert float((noisy - x).std()) == pytest.approx(0.1, rel=0.02)
    # at 0 with sigma 1, half the draws fall below 0 and are clipped to exactly 0
    zero = GaussianNoise(1.0)(torch.zeros_like(x), _gen(1))
    assert 0 <= float(zero.min()) and float(zero.max()) <= 1
    assert float((zero == 0).float().mean()) == pytest.approx(0.5, abs=0.01)
    assert float((zero == 1).float().mean()) == pytest.approx(1 - 0.8413, abs=0.01)  # P(eps > 1)


def test_salt_and_pepper_corrupts_the_fraction_it_claims():
    x = torch.full((N // 784, 1, 28, 28), 0.5)
    noisy = SaltAndPepperNoise(0.3)(x, _gen())
    hit = noisy != 0.5
    assert float(hit.float().mean()) == pytest.approx(0.3, abs=0.005)
    assert set(noisy[hit].unique().tolist()) == {0.0, 1.0}
    assert float(noisy[hit].mean()) == pytest.approx(0.5, abs=0.01)  # salt and pepper alike


def test_masking_zeroes_the_fraction_it_claims_and_keeps_the_rest():
    x = torch.rand(N // 784, 1, 28, 28, generator=_gen(2)) * 0.9 + 0.1  # no zeros to start
    noisy = MaskingNoise(0.25)(x, _gen())
    zeroed = noisy == 0
    assert float(zeroed.float().mean()) == pytest.approx(0.25, abs=0.005)
    assert torch.equal(noisy[~zeroed], x[~zeroed])


@pytest.mark.parametrize("name", list(NOISES))
def test_noise_is_reproducible_from_its_generator_and_stays_in_range(name):
    x = tiny_images(16, binary=False)
    noise = make_noise(name, 0.4)
    a, b = noise(x, _gen(5)), noise(x, _gen(5))
    assert torch.equal(a, b) and not torch.equal(a, noise(x, _gen(6)))
    assert a.shape == x.shape and float(a.min()) >= 0 and float(a.max()) <= 1
    assert torch.equal(make_noise(name, 0.0)(x, _gen()), x)  # level 0 changes nothing


@pytest.mark.parametrize("name,level,message", [
    ("gaussian", -0.1, "sigma) must be >= 0"),
    ("salt-pepper", 1.5, "p) must be in [0, 1.0]"),
    ("mask", float("nan"), "p) must be in [0, 1.0]"),
    ("blur", 0.1, "unknown noise 'blur'; choose one of: gaussian, salt-pepper, mask"),
])
def test_bad_noise_settings_are_refused(name, level, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("[", r"\[").replace("]", r"\]")):
        make_noise(name, level)


def test_psnr_matches_its_definition():
    clean = torch.zeros(2, 1, 4, 4)
    est = clean.clone()
    est[0] += 0.1  # MSE 0.01 -> 20 dB
    est[1, 0, 0, 0] = 1.0  # MSE 1/16 -> 10 log10(16) dB
    assert psnr(est, clean).tolist() == pytest.approx([20.0, 10 * math.log10(16)], abs=1e-4)


@pytest.mark.parametrize("likelihood", list(LIKELIHOODS))
def test_ae_loss_is_the_negative_log_likelihood_of_its_head_at_the_code(likelihood):
    x = tiny_images(5, binary=False).clamp(0.01, 0.99)  # in every likelihood's support
    ae = build_autoencoder((1, 28, 28), model="ae", latent_dim=3, hidden_dim=16,
                           likelihood=likelihood)
    p = ae.likelihood(ae.encoder_net(x))  # p(x | z = e(x)), the VAE's head at one code
    got = ae.reconstruction_loss(x, x)
    assert got.shape == (5,)
    torch.testing.assert_close(got, -p.log_prob(x))
    torch.testing.assert_close(ae.training_loss(x), got.sum())
    torch.testing.assert_close(ae.reconstruct(x), p.mean)  # decode = the likelihood's mean
    got.sum().backward()  # the likelihood's own parameters (learned scales) are trained too
    assert all(q.grad is not None for q in ae.parameters())


def test_ae_losses_are_cross_entropy_and_scaled_squared_error_summed_over_pixels():
    x = tiny_images(5)
    for likelihood in ("bernoulli", "gaussian"):
        ae = build_autoencoder((1, 28, 28), model="ae", latent_dim=3, hidden_dim=16,
                               likelihood=likelihood)
        out = ae.likelihood.decoder(ae.encode(x))  # logits, or the Gaussian's mean
        if likelihood == "bernoulli":
            expected = F.binary_cross_entropy_with_logits(out, x, reduction="none")
            mean = torch.sigmoid(out)
        else:  # -log N(x; mu, 0.1^2) = (x - mu)^2 / (2 * 0.01) + log(0.1 sqrt(2 pi))
            expected = (out - x) ** 2 / (2 * 0.1**2) + math.log(0.1 * math.sqrt(2 * math.pi))
            mean = out
        got = ae.reconstruction_loss(x, x)
        assert got.shape == (5,)
        assert torch.allclose(got, expected.sum((1, 2, 3)), rtol=1e-5)
        assert torch.allclose(ae.training_loss(x), got.sum(), rtol=1e-5)
        assert torch.allclose(ae.reconstruct(x), mean, atol=1e-6)
    with pytest.raises(ValueError, match="unknown likelihood 'l1'; choose one of: bernoulli"):
        build_autoencoder((1, 28, 28), likelihood="l1")
    with pytest.raises(ValueError, match="needs a noise model"):
        DenoisingAutoencoder(ae.encoder_net, ae.likelihood, noise=None)


def test_dae_trains_on_corrupted_inputs_with_clean_targets():
    x = tiny_images(6)
    dae = build_autoencoder((1, 28, 28), model="dae", latent_dim=3, hidden_dim=16,
                            noise="mask", noise_level=0.5)
    noisy = dae.noise(x, _gen(3))
    expected = dae.reconstruction_loss(noisy, x).sum()
    assert torch.allclose(dae.training_loss(x, _gen(3)), expected)
    assert not torch.allclose(dae.training_loss(x, _gen(3)), dae.reconstruction_loss(x, x).sum())


def test_same_networks_as_the_vae():
    from pyro_vae.build import build_vae

    for arch in ("mlp", "conv"):
        ae = build_autoencoder((1, 28, 28), arch=arch, latent_dim=8, hidden_dim=32)
        vae = build_vae((1, 28, 28), arch=arch, latent_dim=8, hidden_dim=32)
        assert type(ae.encoder_net) is type(vae.encoder.net)
        assert type(ae.likelihood) is type(vae.likelihood)  # one likelihood by construction
        assert type(ae.likelihood.decoder) is type(vae.likelihood.decoder)
        # same decoder exactly; the VAE's encoder has a second head of latent_dim outputs
        assert ae.likelihood.state_dict().keys() == vae.likelihood.state_dict().keys()
        n_ae = sum(p.numel() for p in ae.encoder_net.parameters())
        n_vae = sum(p.numel() for p in vae.encoder.net.parameters())
        assert n_vae - n_ae == 8 * (32 + 1)


def test_fitted_code_gaussian_is_the_maximum_likelihood_one():
    codes = torch.randn(500, 3, generator=_gen()) @ torch.tensor(
        [[1.0, 0.5, 0.0], [0.0, 2.0, 0.3], [0.0, 0.0, 0.5]]) + torch.tensor([1.0, -2.0, 0.5])
    fitted = fit_code_distribution(codes.double(), jitter=0.0)
    np_codes = codes.double().numpy()
    assert np.allclose(fitted.mean.numpy(), np_codes.mean(0))
    assert np.allclose(fitted.covariance_matrix.numpy(), np.cov(np_codes.T, bias=True))


def _train(ae, data, epochs=4, seed=0, images=2000):
    opt = torch.optim.Adam(ae.parameters(), lr=2e-3)
    return fit_autoencoder(ae, opt, data.x_train[:images], data.x_test[:300], epochs=epochs,
                           batch_size=100, binarize="dynamic", generator=_gen(seed),
                           progress=False)


def test_ae_reconstruction_error_falls_on_mnist(mnist_offline):
    torch.manual_seed(0)
    ae = build_autoencoder((1, 28, 28), latent_dim=16, hidden_dim=128)
    before = evaluate_autoencoder(ae, mnist_offline.x_test[:300])
    history = _train(ae, mnist_offline)
    train = [row["train_loss"] for row in history]
    assert all(b < a for a, b in zip(train, train[1:]))
    assert history[-1]["test_loss"] < 0.5 * before  # ~545 nats at init


def test_dae_beats_the_ae_on_noisy_inputs(mnist_offline):
    noise = SaltAndPepperNoise(0.3)
    models = {}
    for name in ("ae", "dae"):
        torch.manual_seed(0)  # the same initial weights
        models[name] = build_autoencoder((1, 28, 28), model=name, latent_dim=16, hidden_dim=128,
                                         noise="salt-pepper", noise_level=0.3)
        # (an AE trained briefly still outputs blurred means, which no noise disturbs: the
        # DAE's advantage shows once the AE has learned to copy details, noise included)
        _train(models[name], mnist_offline, epochs=10, images=4000)
    x = mnist_offline.x_test[:500]
    noisy = noise(x, _gen(9))
    score = {name: float(psnr(m.reconstruct(noisy), x).mean()) for name, m in models.items()}
    assert score["dae"] > score["ae"] + 0.5  # dB (measured: 13.1 vs 11.8)
    assert score["dae"] > float(psnr(noisy, x).mean())  # and it does remove noise


def test_fit_autoencoder_stops_on_a_non_finite_loss(mnist_offline):
    ae = build_autoencoder((1, 28, 28), latent_dim=4, hidden_dim=16)
    with torch.no_grad():
        ae.likelihood.decoder.net[0].weight.fill_(float("nan"))
    weights = {k: v.clone() for k, v in ae.state_dict().items()}
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1"):
        _train(ae, mnist_offline, epochs=1)
    for k, v in ae.state_dict().items():  # no step was taken on the NaN loss
        torch.testing.assert_close(v, weights[k], rtol=0, atol=0, equal_nan=True)
