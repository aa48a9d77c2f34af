"""The training loops, SVI and autoencoder: minibatches from a whole-dataset tensor, a torch
optimizer, progress bars, a stop on the first non-finite loss.

The loss is Pyro's ``ELBO.differentiable_loss(model, guide, x)``: -ELBO summed over the batch (a
differentiable tensor). We step on its mean per image, so that the learning rate does not depend
on the batch size. No ``pyro.param`` is involved: the VAE is an ``nn.Module`` and its
``state_dict`` is the whole trained state.
"""

import math
import time

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from tqdm import tqdm

from .data import batches
from .errors import lookup
from .objectives import IWAE

__all__ = [
    "ELBOS",
    "NonFiniteLossError",
    "evaluate_autoencoder",
    "evaluate_loss",
    "fit",
    "fit_autoencoder",
    "kl_schedule",
    "lr_schedule",
    "make_elbo",
]

# name -> ELBO class taking (num_particles=, vectorize_particles=, max_plate_nesting=).
# "meanfield" uses closed-form KL(q || p) where torch knows it (e.g. diagonal Normal vs the
# standard normal prior); "iwae" is the importance-weighted bound with K = num_particles.
ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "iwae": IWAE}


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; Pyro only warns, so the loop raises this instead."""

    def __init__(self, epoch, step, value):
        self.epoch, self.step, self.value = epoch, step, value
        super().__init__(
            f"the loss became {value} at epoch {epoch}, step {step}; training stopped "
            "(try a lower --lr)"
        )


def make_elbo(name, num_particles=1, max_plate_nesting=1):
    """An ELBO estimator by name (see :data:`ELBOS`), particles vectorized."""
    return lookup(ELBOS, "ELBO", name)(
        num_particles=num_particles,
        vectorize_particles=num_particles > 1,
        max_plate_nesting=max_plate_nesting,
    )


@torch.no_grad()
def evaluate_loss(vae, loss, x, batch_size=1000):
    """Mean -ELBO per image over ``x``, one pass in batches (a Monte-Carlo estimate)."""
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        xb = x[start : start + batch_size]
        total += loss.differentiable_loss(vae.model, vae.guide, xb).item()
    return total / x.shape[0]


def kl_schedule(beta=1.0, warmup_epochs=0):
    """The KL weight of each epoch: beta * min(1, epoch / warmup_epochs) (linear warm-up,
    Bowman et al. 2016; Sonderby et al. 2016), or beta throughout when ``warmup_epochs == 0``."""
    if warmup_epochs <= 0:
        return lambda epoch: beta
    return lambda epoch: beta * min(1.0, epoch / warmup_epochs)


def lr_schedule(lr, cooldown=0.0):
    """The learning rate at the fraction ``t`` in [0, 1) of a run's steps done:

    .. math:: \mathrm{lr}(t) = \mathrm{lr} \cdot \min\big(1, (1 - t) / c\big),

    constant, then falling linearly toward 0 over the last fraction ``c = cooldown`` of the
    steps (the last of N steps takes lr / (c N)): the stable-then-decay end of warmup-stable-decay
    schedules. ``cooldown=0`` keeps ``lr`` throughout.

    A function of the step alone, so a resumed run steps exactly as an uninterrupted one. A
    finished run resumed with more ``--epochs`` stretches its schedule to the new length: the
    rate rises back to ``lr`` (a warm restart) and cools again at the new end.
    """
    if cooldown <= 0:
        return lambda t: lr
    return lambda t: lr * min(1.0, (1.0 - t) / cooldown)


def set_learning_rate(optimizer, lr_at, epoch, step, steps_per_epoch, epochs):
    """Set every group's learning rate to ``lr_at(t)``, t the fraction of the run's steps done
    before step ``step`` (1-based) of epoch ``epoch`` (1-based); no-op when ``lr_at`` is None."""
    if lr_at is None:
        return
    lr = lr_at(((epoch - 1) * steps_per_epoch + step - 1) / (epochs * steps_per_epoch))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _run_epochs(module, optimizer, batch_loss, test_loss, x_train, *, epochs, batch_size,
                binarize, generator, start_epoch, on_epoch, progress, columns=None, world=None,
                x_test=None, lr_at=None):
    """The loop shared by :func:`fit` and :func:`fit_autoencoder`.

    ``batch_loss(xb, epoch, first)`` returns the loss summed over the batch (``first``: the first
    step of this call); ``test_loss()`` the mean test loss per image (``test_loss(x)``: over
    ``x``); ``columns(epoch)`` extra columns for the epoch's row; ``lr_at(t)`` the learning rate
    at the fraction t of the run's steps (:func:`lr_schedule`). With a ``world`` of several
    processes, or data on a GPU, :func:`pyro_vae.distributed.run_epochs` runs the epochs.
    """
    if world is not None and (world.size > 1 or x_train.device.type != "cpu"):
        from .distributed import run_epochs

        return run_epochs(world, module, optimizer, batch_loss, test_loss, x_train, x_test,
                          epochs=epochs, batch_size=batch_size, binarize=binarize,
                          generator=generator, start_epoch=start_epoch, on_epoch=on_epoch,
                          progress=progress, columns=columns, lr_at=lr_at)
    history = []
    steps_per_epoch = math.ceil(x_train.shape[0] / batch_size)
    for epoch in range(start_epoch + 1, epochs + 1):
        module.train()
        extra = columns(epoch) if columns is not None else {}
        t0 = time.perf_counter()
        total, seen = 0.0, 0
        bar = tqdm(
            batches(x_train, batch_size, binarize=binarize, generator=generator),
            total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", disable=not progress,
            leave=False, unit="batch",
        )
        for step, xb in enumerate(bar, 1):
            loss = batch_loss(xb, epoch, first=not history and step == 1)  # summed over the batch
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLossError(epoch, step, value)
            optimizer.zero_grad(set_to_none=True)
            (loss / xb.shape[0]).backward()
            set_learning_rate(optimizer, lr_at, epoch, step, steps_per_epoch, epochs)
            optimizer.step()
            total += value
            seen += xb.shape[0]
            if step % 10 == 0 or step == steps_per_epoch:
                bar.set_postfix(loss=f"{total / seen:.2f}")
        seconds = time.perf_counter() - t0
        module.eval()
        row = {"epoch": epoch, "train_loss": total / seen, "test_loss": test_loss(), **extra,
               "seconds": seconds, "images_per_second": seen / seconds}
        if not math.isfinite(row["test_loss"]):
            raise NonFiniteLossError(epoch, "test", row["test_loss"])
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    return history


def fit(vae, loss, optimizer, x_train, x_test, *, epochs, batch_size, binarize, generator,
        start_epoch=0, on_epoch=None, progress=True, kl_weight=None, world=None, lr_at=None):
    """Train ``vae`` with ``loss`` (a Pyro ELBO) for epochs ``start_epoch + 1 .. epochs``.

    Each epoch draws a permutation (and, with ``binarize="dynamic"``, fresh binary pixels) from
    ``generator``. After each epoch ``on_epoch(row)`` is called with a dict: ``epoch``,
    ``train_loss`` (the objective per image over the epoch's batches: -ELBO, or -IWAE_K for the
    IWAE objective), ``test_loss`` (the same on ``x_test``, with KL weight 1), ``kl_weight``,
    ``seconds`` and ``images_per_second``. Returns the list of rows.

    ``kl_weight(epoch)``, if given, is passed as ``kl_scale`` to model and guide in the epoch's
    training steps (beta-VAE, KL warm-up; see :func:`kl_schedule`); test losses are always the
    true -ELBO. ``lr_at(t)``, if given, sets the learning rate at each step, t the fraction of
    the run's steps done (see :func:`lr_schedule`); otherwise the optimizer's stays.

    Raises :class:`NonFiniteLossError` on a NaN or infinite loss, before the optimizer steps on it
    (on a GPU, up to :data:`~pyro_vae.distributed.CUDA_CHECK_EVERY` steps after).

    ``world``: a :class:`~pyro_vae.distributed.World` of several processes trains one job
    with DistributedDataParallel, each process its share of every batch (see
    :mod:`pyro_vae.distributed`); ``generator`` is then this rank's noise.
    """
    kl_weight = kl_weight or kl_schedule()

    def batch_loss(xb, epoch, first):
        # Pyro's checks (shapes, supports, model/guide match) run on the first step of a
        # call; after that they cost ~10% of a small MLP's step and find nothing new.
        with pyro.validation_enabled(first):
            # -ELBO_beta, summed; Pyro passes kl_scale on to model and guide
            return loss.differentiable_loss(vae.model, vae.guide, xb, kl_scale=kl_weight(epoch))

    return _run_epochs(vae, optimizer, batch_loss,
                       lambda x=x_test: evaluate_loss(vae, loss, x),
                       x_train, epochs=epochs, batch_size=batch_size, binarize=binarize,
                       generator=generator, start_epoch=start_epoch, on_epoch=on_epoch,
                       progress=progress, columns=lambda epoch: {"kl_weight": kl_weight(epoch)},
                       world=world, x_test=x_test, lr_at=lr_at)


# The DAE's test loss uses noise from this seed, the same pixels every epoch and every run.
_TEST_NOISE_SEED = 4321


@torch.no_grad()
def evaluate_autoencoder(ae, x, batch_size=1000):
    """Mean training objective per image over ``x``: reconstruction loss of clean inputs for an
    AE; for a DAE, of inputs corrupted with a fixed seed (so epochs are comparable)."""
    generator = torch.Generator(device=x.device).manual_seed(_TEST_NOISE_SEED)
    total = 0.0
    for start in range(0, x.shape[0], batch_size):
        total += ae.training_loss(x[start : start + batch_size], generator).item()
    return total / x.shape[0]


def fit_autoencoder(ae, optimizer, x_train, x_test, *, epochs, batch_size, binarize, generator,
                    start_epoch=0, on_epoch=None, progress=True, world=None, lr_at=None):
    """Train an :class:`~pyro_vae.autoencoders.Autoencoder` (or DAE) by minibatch gradient
    descent on its reconstruction loss, with the batches, rows and errors of :func:`fit`;
    a DAE's noise is drawn from ``generator`` for every batch; ``world`` and ``lr_at`` as for
    :func:`fit`."""
    return _run_epochs(
        ae, optimizer, lambda xb, epoch, first: ae.training_loss(xb, generator),
        lambda x=x_test: evaluate_autoencoder(ae, x), x_train, epochs=epochs,
        batch_size=batch_size, binarize=binarize, generator=generator, start_epoch=start_epoch,
        on_epoch=on_epoch, progress=progress, world=world, x_test=x_test, lr_at=lr_at)
