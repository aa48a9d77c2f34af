"""Held-out log-likelihood of pyro_vae's default VAE against its peers' architectures, trained
on the same data, epochs and batches, one after the other in one run.

- **default**: exactly what ``python scripts/train_svi.py`` trains (its ``Config`` defaults),
  with only the data, epochs, batch size and evaluation changed; run through the script's own
  ``run`` into a temporary folder.
- **pyro-example**: the VAE of Pyro's ``examples/vae/vae.py`` as it is written there: 784-400-50
  MLPs with softplus, a Bernoulli on the decoder's sigmoid, the encoder's scale as exp(.),
  ``pyro.module`` parameters in the global store, ``SVI`` with ``Trace_ELBO`` and Pyro's
  ``Adam(lr=1e-3)``.
- **pythae-arch** (with ``--peers``): pythae's default MNIST VAE networks, 784-512-50 ReLU
  with a log-variance head, as a Pyro program trained like pyro-example.

Every model sees the same minibatches: one permutation stream and one dynamic binarization
drawn from ``--seed``, as ``train_svi.py`` draws them. Each is scored by the importance-weighted
bound IWAE_K (K = ``--eval-samples``, ``pyro_vae.estimators.log_likelihood``) on the first
``--eval-images`` test images, statically binarized as every run's test set is. NLL = -IWAE_K
in nats per image, lower is better. The last line: ``difference <pyro-example NLL - default
NLL>`` (positive: the default is better).

    python benchmarks/bench_quality.py                          # MNIST under data/
    python benchmarks/bench_quality.py --dataset fashion-mnist --train-images 14000
"""

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.optim import Adam
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts"))
import train_svi  # noqa: E402  (the script's own defaults and run)

from pyro_vae.data import DATASETS, batches, load_dataset  # noqa: E402
from pyro_vae.errors import UserError  # noqa: E402
from pyro_vae.estimators import log_likelihood  # noqa: E402


class _Encoder(nn.Module):
    # x (N, 784) -> loc, scale (N, latent); the scale from exp (Pyro) or exp(logvar / 2) (pythae)
    def __init__(self, hidden, latent, act, logvar):
        super().__init__()
        self.fc1, self.act, self.logvar = nn.Linear(784, hidden), act(), logvar
        self.fc21, self.fc22 = nn.Linear(hidden, latent), nn.Linear(hidden, latent)

    def forward(self, x):
        h = self.act(self.fc1(x))
        s = self.fc22(h)
        return self.fc21(h), torch.exp(s / 2 if self.logvar else s)


class _Decoder(nn.Module):
    # z (..., latent) -> pixel probabilities (..., 784)
    def __init__(self, hidden, latent, act):
        super().__init__()
        self.fc3, self.act, self.fc4 = nn.Linear(latent, hidden), act(), nn.Linear(hidden, 784)

    def forward(self, z):
        return torch.sigmoid(self.fc4(self.act(self.fc3(z))))


class PeerVAE(nn.Module):
    """A peer's VAE as a Pyro program in the style of Pyro's example: ``pyro.module`` registers
    the nets in the global parameter store; x is flattened to 784 pixels."""

    def __init__(self, hidden, latent, act, logvar=False):
        super().__init__()
        self.latent = latent
        self.encoder = _Encoder(hidden, latent, act, logvar)
        self.decoder = _Decoder(hidden, latent, act)

    def model(self, x):
        pyro.module("decoder", self.decoder)
        x = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            loc = x.new_zeros(x.shape[0], self.latent)
            z = pyro.sample("latent", dist.Normal(loc, torch.ones_like(loc)).to_event(1))
            pyro.sample("obs", dist.Bernoulli(self.decoder(z), validate_args=False).to_event(1),
                        obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        x = x.reshape(x.shape[0], -1)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(loc, scale).to_event(1))


PEERS = {
    "pyro-example": lambda: PeerVAE(400, 50, nn.Softplus),
    "pythae-arch": lambda: PeerVAE(512, 50, nn.ReLU, logvar=True),
}


def nll(model, guide, x, args):
    with torch.no_grad():
        est = log_likelihood(model, guide, x, num_samples=args.eval_samples, batch_size=100,
                             khat=False)
    return -est.mean, est.stderr


def train_peer(name, data, args):
    pyro.clear_param_store()
    pyro.set_rng_seed(args.seed)
    vae = PEERS[name]()
    svi = SVI(vae.model, vae.guide, Adam({"lr": 1e-3}), Trace_ELBO(max_plate_nesting=1))
    generator = torch.Generator().manual_seed(args.seed)  # the stream train_svi.py draws
    t0 = time.perf_counter()
    with pyro.validation_enabled(False):
        for epoch in range(args.epochs):
            for xb in batches(data.x_train, args.batch_size, binarize="dynamic",
                              generator=generator):
                svi.step(xb)
    seconds = time.perf_counter() - t0
    return nll(vae.model, vae.guide, data.x_test[: args.eval_images], args), seconds


def train_default(args, source, folder):
    cfg = train_svi.Config(dataset=source, data_root=args.data_root, download=args.download,
                           epochs=args.epochs, batch_size=args.batch_size, seed=args.seed,
                           device="cpu", out=os.path.join(folder, "default"),
                           eval_samples=args.eval_samples, eval_images=args.eval_images)
    summary = train_svi.run(cfg, progress=False)
    with open(os.path.join(cfg.out, "metrics.json")) as f:
        seconds = sum(row["seconds"] for row in json.load(f))  # training time, as for the peers
    return (-summary["test_loglik_mean"], summary["test_loglik_stderr"]), seconds, cfg


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist",
                   help=f"{', '.join(DATASETS)} or an .npz path (default: %(default)s)")
    p.add_argument("--data-root", default="data", help="torchvision's layout (default: %(default)s)")
    p.add_argument("--no-download", dest="download", action="store_false")
    p.add_argument("--train-images", type=int, default=0,
                   help="train on the first N training images, 0 for all (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=20, help="default: %(default)s")
    p.add_argument("--batch-size", type=int, default=128, help="default: %(default)s")
    p.add_argument("--eval-samples", type=int, default=1000, help="K of IWAE_K (default: %(default)s)")
    p.add_argument("--eval-images", type=int, default=1000,
                   help="test images scored (default: %(default)s)")
    p.add_argument("--peers", default="pyro-example",
                   help=f"comma-separated, from {', '.join(PEERS)} (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")
    p.error = lambda message: p.exit(2, f"bench_quality.py: error: {message}\n")  # one line
    args = p.parse_args(argv)
    peers = list(dict.fromkeys(args.peers.split(",")))  # each once, in the order given
    if "pyro-example" not in peers or not set(peers) <= set(PEERS):
        p.error(f"--peers must include pyro-example and name only {', '.join(PEERS)}")
    for name in ("train_images", "epochs", "batch_size", "eval_samples", "eval_images"):
        if getattr(args, name) < (0 if name == "train_images" else 1):
            p.error(f"--{name.replace('_', '-')} must be " + (
                "0 (all) or positive" if name == "train_images" else "positive"))

    try:
        compare(args, peers)
    except UserError as e:  # a dataset that is not there, data the default cannot take, ...
        p.exit(2, f"bench_quality.py: error: {e}\n")


def compare(args, peers):
    """Train the default and ``peers`` on the same data and batches; print their NLLs."""
    data = load_dataset(args.dataset, args.data_root, download=args.download, binarize="dynamic")
    with tempfile.TemporaryDirectory() as folder:
        source = args.dataset
        if args.train_images:
            # the default trains through the script, which reads a dataset by name or path:
            # give it the same subset as an .npz (grey levels, test set untouched)
            source = os.path.join(folder, "subset.npz")
            raw = load_dataset(args.dataset, args.data_root, download=args.download,
                               binarize="none")
            np.savez(source, x_train=raw.x_train[: args.train_images].numpy(),
                     x_test=raw.x_test.numpy())
            data.x_train = data.x_train[: args.train_images]
        print(f"{data.source}: {len(data.x_train)} training images, {args.epochs} epochs x "
              f"batch {args.batch_size}; NLL = -IWAE_{args.eval_samples} on "
              f"{min(args.eval_images, len(data.x_test))} test images (nats, lower is better)")
        (default, se), seconds, cfg = train_default(args, source, folder)
        net = (f"{cfg.arch} {cfg.hidden_dim}x{cfg.depth} {cfg.activation}, lr {cfg.lr}"
               + (f", {cfg.stochastic_layers} stochastic layers" if cfg.stochastic_layers > 1
                  else ""))
        print(f"{'default':14s} NLL {default:8.2f} +- {se:.2f}  ({net}; {seconds:.0f} s)")
        results = {}
        for name in peers:
            (value, se), seconds = train_peer(name, data, args)
            results[name] = value
            print(f"{name:14s} NLL {value:8.2f} +- {se:.2f}  ({seconds:.0f} s)")
    diff = results["pyro-example"] - default
    print(f"pyro-example NLL - default NLL = {diff:.2f} nats, {diff / results['pyro-example']:.1%} "
          "of pyro-example's (positive: the default is better)")
    print(f"difference {diff:.2f}")


if __name__ == "__main__":
    main()
