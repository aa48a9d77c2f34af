import pytest
import torch

from pyro_vae.build import build_vae
from pyro_vae.train import NonFiniteLossError, evaluate_loss, fit, lr_schedule, make_elbo

from conftest import tiny_images


def small_vae(arch="mlp"):
    return build_vae((1, 28, 28), arch=arch, latent_dim=8, hidden_dim=64)


@pytest.mark.parametrize("arch,elbo", [("mlp", "trace"), ("mlp", "meanfield"), ("conv", "trace")])
def test_negative_elbo_falls_on_real_digits(mnist_offline, arch, elbo):
    x_train, x_test = mnist_offline.x_train[:1000], mnist_offline.x_test[:200]
    vae = small_vae(arch)
    loss = make_elbo(elbo, num_particles=2)
    before = evaluate_loss(vae, loss, x_test)
    opt = torch.optim.Adam(vae.parameters(), lr=3e-3)
    rows = []
    history = fit(vae, loss, opt, x_train, x_test, epochs=3, batch_size=100, binarize="dynamic",
                  generator=torch.Generator().manual_seed(0), on_epoch=rows.append,
                  progress=False)
    assert rows == history and [r["epoch"] for r in history] == [1, 2, 3]
    # an untrained decoder costs ~784 * log 2 = 543 nats; a few epochs must cut that a lot
    assert before > 500
    assert history[-1]["test_loss"] < 0.5 * before
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(set(r) == {"epoch", "train_loss", "test_loss", "kl_weight", "seconds",
                      "images_per_second"}
               for r in history)


def test_non_finite_loss_stops_before_the_step(mnist_offline):
    vae = small_vae()
    with torch.no_grad():
        vae.likelihood.decoder.net[-1].bias[0] = float("nan")
    snapshot = {k: v.clone() for k, v in vae.state_dict().items()}
    opt = torch.optim.Adam(vae.parameters(), lr=1e-3)
    with pytest.raises(NonFiniteLossError, match="epoch 1, step 1.*lower --lr") as info:
        fit(vae, make_elbo("trace"), opt, mnist_offline.x_train[:200], mnist_offline.x_test[:50],
            epochs=2, batch_size=50, binarize="dynamic", generator=torch.Generator(),
            progress=False)
    assert (info.value.epoch, info.value.step) == (1, 1)
    for k, v in vae.state_dict().items():
        assert torch.equal(v, snapshot[k]) or torch.isnan(v).any()


def test_unknown_elbo_lists_the_valid_ones():
    with pytest.raises(ValueError, match="trace, meanfield, iwae"):
        make_elbo("renyi")


def test_lr_schedule_holds_then_falls_linearly_to_zero():
    at = lr_schedule(0.01, cooldown=0.25)
    assert [at(t) for t in (0.0, 0.5, 0.75)] == [0.01, 0.01, 0.01]
    assert at(0.875) == pytest.approx(0.005) and at(1.0) == 0.0
    assert {lr_schedule(0.01)(t) for t in (0.0, 0.9, 1.0)} == {0.01}


def test_fit_sets_the_learning_rate_of_every_step_from_the_schedule():
    # 4 steps an epoch x 2 epochs, cooldown half the run: steps 5..8 use 1, 3/4, 1/2, 1/4 of lr
    vae, x = small_vae(), tiny_images(32)
    opt = torch.optim.SGD(vae.parameters(), lr=123.0)  # overwritten before every step
    seen = []
    step = opt.step

    def recording_step(*args, **kwargs):
        seen.append(opt.param_groups[0]["lr"])
        return step(*args, **kwargs)

    opt.step = recording_step
    fit(vae, make_elbo("trace"), opt, x, x[:4], epochs=2, batch_size=8, binarize="none",
        generator=torch.Generator().manual_seed(0), progress=False,
        lr_at=lr_schedule(1e-3, cooldown=0.5))
    assert seen == pytest.approx([1e-3] * 5 + [7.5e-4, 5e-4, 2.5e-4])
