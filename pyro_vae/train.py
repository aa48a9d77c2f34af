"""The training loop, SVI and autoencoder: minibatches from whole-dataset tensors (the images, or
aligned fields such as labels), a torch optimizer, progress bars, a stop on the first
non-finite loss; one process steps with :class:`Steps`, a rank of several with
:meth:`pyro_vae.distributed.World.steps`.

The loss is Pyro's ``ELBO.differentiable_loss(model, guide, x)``, or the model's own ``loss``
(:mod:`pyro_vae.protocol`): -ELBO summed over the batch. We step on its mean per image, so that
the learning rate does not depend on the batch size. No ``pyro.param`` is involved: the VAE is
an ``nn.Module`` and its ``state_dict`` is the whole trained state.
"""

import contextlib
import math
import time

import pyro
import torch
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.infer import renyi_elbo, trace_elbo, trace_mean_field_elbo  # their warn_if_nan
from tqdm import tqdm

from .data import batches
from .errors import NonFiniteLossError, lookup
from .objectives import IWAE
from .protocol import check_model, model_inputs

__all__ = [
    "CUDA_CHECK_EVERY",
    "ELBOS",
    "NonFiniteLossError",
    "Steps",
    "evaluate_autoencoder",
    "evaluate_loss",
    "fit",
    "fit_autoencoder",
    "kl_schedule",
    "lr_schedule",
    "make_elbo",
    "model_loss",
    "run_epochs",
]

# On a GPU the loss is read on the host (and ranks agree) every this many steps.
CUDA_CHECK_EVERY = 20

#: name -> ELBO class taking (num_particles=, vectorize_particles=, max_plate_nesting=).
#: "meanfield" uses closed-form KL(q || p) where torch knows it (e.g. diagonal Normal vs the
#: standard normal prior); "iwae" is the importance-weighted bound with K = num_particles.
ELBOS = {"trace": Trace_ELBO, "meanfield": TraceMeanField_ELBO, "iwae": IWAE}


def make_elbo(name, num_particles=1, max_plate_nesting=1):
    """An ELBO estimator by name (see :data:`ELBOS`), particles vectorized."""
    return lookup(ELBOS, "ELBO", name)(num_particles=num_particles,
                                       vectorize_particles=num_particles > 1,
                                       max_plate_nesting=max_plate_nesting)


def mean_loss(batch_loss, x, batch_size=1000):
    """The mean per image over ``x`` (images, or a dict of aligned tensors) of ``batch_loss``, a
    loss summed over a batch, in one pass of batches."""
    n = batch_size_of(x)
    return sum(batch_loss(rows(x, slice(start, start + batch_size))).item()
               for start in range(0, n, batch_size)) / n


@torch.no_grad()
def evaluate_loss(vae, loss, x, batch_size=1000):
    """Mean -ELBO per image over ``x`` (images, or a dict of aligned tensors), one pass in
    batches (a Monte-Carlo estimate)."""
    return mean_loss(lambda xb: model_loss(vae, loss, xb), x, batch_size)


def model_loss(model, loss, batch, **kwargs):
    """The objective of ``batch``, summed over it: ``model.loss(loss, *fields, **kwargs)`` where
    the model defines one (M2's labelled and unlabelled parts), else ``loss``'s
    ``differentiable_loss`` of its model and guide (see :mod:`pyro_vae.protocol`)."""
    inputs = model_inputs(model, batch)
    if hasattr(model, "loss"):
        return model.loss(loss, *inputs, **kwargs)
    return loss.differentiable_loss(model.model, model.guide, *inputs, **kwargs)


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
    schedules; ``cooldown=0`` keeps ``lr``. A function of the step alone, so a resumed run steps
    exactly as an uninterrupted one; one resumed with more ``--epochs`` stretches its schedule,
    the rate rising back to ``lr`` (a warm restart) and cooling again at the new end.
    """
    if cooldown <= 0:
        return lambda t: lr
    return lambda t: lr * min(1.0, (1.0 - t) / cooldown)


@contextlib.contextmanager
def pyro_nan_warnings_off():
    """Pyro's ELBOs test the loss for NaN on the host (``warn_if_nan``): a device sync per step
    on a GPU. The loop checks the loss itself, so on a GPU the test is left out."""
    modules = (trace_elbo, trace_mean_field_elbo, renyi_elbo)
    saved = [m.warn_if_nan for m in modules]
    for m in modules:
        m.warn_if_nan = lambda value, *args, **kwargs: value
    try:
        yield
    finally:
        for m, f in zip(modules, saved):
            m.warn_if_nan = f


def batch_size_of(batch):
    """The number of images in a batch: a tensor's rows, or a dict's ``"x"``'s."""
    return (batch["x"] if isinstance(batch, dict) else batch).shape[0]


def rows(batch, index):
    """The rows ``index`` of a batch: of a tensor, or of every tensor of a dict alike."""
    return {k: v[index] for k, v in batch.items()} if isinstance(batch, dict) else batch[index]


class Steps:
    """The training steps of one process, for :func:`run_epochs`: each batch's summed loss,
    checked for NaN or infinity, backpropagated as its mean per image, stepped on."""

    reports = True  # whether this process shows the progress bar

    def __init__(self, module, optimizer, batch_loss, check_every, device):  # (module: the ranks')
        self.optimizer, self.batch_loss, self.check_every = optimizer, batch_loss, check_every
        # the step of a NaN, or 0; 0 again at every epoch's start, as its last step is a check
        self.first_bad = torch.zeros((), dtype=torch.long, device=device)

    def epochs_context(self):  # (the ranks': interrupts deferred to their agreements)
        return contextlib.nullcontext()

    def batches(self, train, batch_size, *, binarize, generator):
        """``(batch, images in the global batch)`` per step of an epoch."""
        return ((b, batch_size_of(b)) for b in batches(train, batch_size, binarize=binarize,
                                                           generator=generator))

    def nonfinite(self, loss, epoch, step, check):
        """The :class:`NonFiniteLossError` of a bad ``loss``, else None; with ``check_every >
        1``, of the first bad step, kept on the device and read only where ``check``."""
        if self.check_every == 1:
            value = loss.item()
            return None if math.isfinite(value) else NonFiniteLossError(epoch, step, value)
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad == 0)
        self.first_bad = torch.where(bad, step, self.first_bad)
        bad_step = int(self.first_bad.item()) if check else 0
        return NonFiniteLossError(epoch, bad_step, float("nan")) if bad_step else None

    def step(self, batch, global_size, epoch, step, *, first, check):
        """One step; returns the batch's summed loss, detached."""
        loss = self.batch_loss(batch, epoch, first=first)  # summed over the batch, (,)
        error = self.nonfinite(loss, epoch, step, check)
        if error is not None:
            raise error
        self.optimizer.zero_grad(set_to_none=True)
        (loss * (1 / global_size)).backward()
        self.optimizer.step()
        return loss.detach()

    def means(self, total, seen, test_loss, test):
        """The epoch's mean training and test losses per image, and the images trained on."""
        return total / seen, test_loss(test), seen


def run_epochs(module, optimizer, batch_loss, test_loss, x_train, x_test, *, epochs, batch_size,
               binarize, generator, start_epoch=0, on_epoch=None, progress=True, columns=None,
               world=None, lr_at=None, check_every=None):
    """The loop of :func:`fit` and :func:`fit_autoencoder`: epochs ``start_epoch + 1 ..
    epochs``, each row passed to ``on_epoch`` and returned in a list. ``x_train`` and ``x_test``
    are the images ``(N, ...)``, or dicts of aligned tensors (``"x"``, the images; ``"y"``,
    labels, ...; see :func:`pyro_vae.data.batches`), batched alike. ``batch_loss(batch, epoch,
    first)`` returns the loss summed over the batch (``first``: the first step of this call);
    ``test_loss(x_test)`` the mean loss per image; ``columns(epoch)`` extra columns for the
    epoch's row; ``lr_at(t)`` the learning rate at the fraction t of the run's steps done
    (:func:`lr_schedule`).

    The loss is checked for NaN or infinity every ``check_every`` steps (default: every step
    on the CPU, where reading it costs no device sync, so that the optimizer never steps on it;
    :data:`CUDA_CHECK_EVERY` on a GPU, where a read is a sync) and at each epoch's end:
    :class:`NonFiniteLossError`. ``world``: a :class:`~pyro_vae.distributed.World` of several
    processes steps with its :meth:`~pyro_vae.distributed.World.steps`.
    """
    device = (x_train["x"] if isinstance(x_train, dict) else x_train).device
    check_every = check_every or (1 if device.type == "cpu" else CUDA_CHECK_EVERY)
    several = world is not None and world.size > 1
    steps = (world.steps if several else Steps)(module, optimizer, batch_loss, check_every, device)
    steps_per_epoch = math.ceil(batch_size_of(x_train) / batch_size)
    history = []
    quiet_pyro = pyro_nan_warnings_off() if device.type == "cuda" else contextlib.nullcontext()
    with steps.epochs_context(), quiet_pyro:
        for epoch in range(start_epoch + 1, epochs + 1):
            module.train()
            extra = columns(epoch) if columns is not None else {}
            t0 = time.perf_counter()
            total = torch.zeros((), dtype=torch.float64, device=device)  # loss summed
            seen = 0
            bar = tqdm(steps.batches(x_train, batch_size, binarize=binarize, generator=generator),
                       total=steps_per_epoch, desc=f"epoch {epoch}/{epochs}", leave=False,
                       disable=not (progress and steps.reports), unit="batch")
            for step, (batch, global_size) in enumerate(bar, 1):
                if lr_at is not None:  # at the fraction of the run's steps done before this one
                    lr = lr_at(((epoch - 1) * steps_per_epoch + step - 1)
                               / (epochs * steps_per_epoch))
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                total += steps.step(batch, global_size, epoch, step,
                                    first=not history and step == 1,
                                    check=step % check_every == 0 or step == steps_per_epoch)
                seen += batch_size_of(batch)
                if step == steps_per_epoch or (step % check_every == 0 and step % 10 == 0):
                    bar.set_postfix(loss=f"{total.item() / max(seen, 1):.2f}")
            seconds = time.perf_counter() - t0
            module.eval()
            train_loss, test_mean, images = steps.means(total.item(), seen, test_loss, x_test)
            row = {"epoch": epoch, "train_loss": train_loss, "test_loss": test_mean, **extra,
                   "seconds": seconds, "images_per_second": images / seconds}
            if not math.isfinite(row["test_loss"]):  # alike on every rank: rank 0 says it
                raise NonFiniteLossError(epoch, "test", row["test_loss"])
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
    return history


def fit(vae, loss, optimizer, x_train, x_test, *, epochs, batch_size, binarize, generator,
        start_epoch=0, on_epoch=None, progress=True, kl_weight=None, world=None, lr_at=None):
    """Train ``vae`` with ``loss`` (a Pyro ELBO) for epochs ``start_epoch + 1 .. epochs``.

    ``x_train`` and ``x_test`` are images, or dicts of aligned tensors (``"x"`` and e.g.
    ``"y"``) from which each batch passes ``vae.batch_fields`` to model and guide (see
    :mod:`pyro_vae.protocol`). Each epoch draws a permutation (and, with
    ``binarize="dynamic"``, fresh binary pixels) from ``generator``. After each epoch
    ``on_epoch(row)`` is called with a dict: ``epoch``, ``train_loss`` (the objective per image
    over the epoch's batches: -ELBO, or -IWAE_K for the IWAE objective), ``test_loss`` (the
    same on ``x_test``, with KL weight 1), ``kl_weight``, ``seconds`` and
    ``images_per_second``. Returns the list of rows.

    ``kl_weight(epoch)``, if given, is passed as ``kl_scale`` to model and guide in the epoch's
    training steps (beta-VAE, KL warm-up; see :func:`kl_schedule`); test losses are always the
    true -ELBO. ``lr_at(t)``, if given, sets the learning rate at each step (:func:`lr_schedule`).
    A NaN or infinite loss raises :class:`NonFiniteLossError` before the optimizer steps on it
    (on a GPU, up to :data:`CUDA_CHECK_EVERY` steps after). ``world``: a
    :class:`~pyro_vae.distributed.World` of several processes trains one job with
    DistributedDataParallel, each process its share of every batch; ``generator`` is then this
    rank's noise.
    """
    check_model(vae)
    kl_weight = kl_weight or kl_schedule()

    def batch_loss(xb, epoch, first):
        # Pyro's checks (shapes, supports, model/guide match) run on the first step of a
        # call; after that they cost ~10% of a small MLP's step and find nothing new.
        with pyro.validation_enabled(first):
            # -ELBO_beta, summed; Pyro passes kl_scale on to model and guide
            return model_loss(vae, loss, xb, kl_scale=kl_weight(epoch))

    return run_epochs(vae, optimizer, batch_loss, lambda x: evaluate_loss(vae, loss, x),
                      x_train, x_test, epochs=epochs, batch_size=batch_size, binarize=binarize,
                      generator=generator, start_epoch=start_epoch, on_epoch=on_epoch,
                      progress=progress, columns=lambda epoch: {"kl_weight": kl_weight(epoch)},
                      world=world, lr_at=lr_at)


# The DAE's test loss uses noise from this seed, the same pixels every epoch and every run.
_TEST_NOISE_SEED = 4321


@torch.no_grad()
def evaluate_autoencoder(ae, x, batch_size=1000):
    """Mean training objective per image over ``x``: reconstruction loss of clean inputs for an
    AE; for a DAE, of inputs corrupted with a fixed seed (so epochs are comparable)."""
    generator = torch.Generator(device=x.device).manual_seed(_TEST_NOISE_SEED)
    return mean_loss(lambda xb: ae.training_loss(xb, generator), x, batch_size)


def fit_autoencoder(ae, optimizer, x_train, x_test, *, epochs, batch_size, binarize, generator,
                    start_epoch=0, on_epoch=None, progress=True, world=None, lr_at=None):
    """Train an :class:`~pyro_vae.autoencoders.Autoencoder` (or DAE) by minibatch gradient
    descent on its reconstruction loss, with the batches, rows, errors, ``world`` and ``lr_at``
    of :func:`fit`; a DAE's noise is drawn from ``generator`` for every batch."""
    return run_epochs(
        ae, optimizer, lambda xb, epoch, first: ae.training_loss(xb, generator),
        lambda x: evaluate_autoencoder(ae, x), x_train, x_test, epochs=epochs,
        batch_size=batch_size, binarize=binarize, generator=generator, start_epoch=start_epoch,
        on_epoch=on_epoch, progress=progress, world=world, lr_at=lr_at)

