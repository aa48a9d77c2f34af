"""Time one SVI training step against a hand-written plain-PyTorch VAE step.

Both use the same 784-400-50 MLP networks (fresh copies of one initialization), the same batch,
the same single-sample reparameterized -ELBO (Monte-Carlo KL, as Trace_ELBO computes it) and Adam.
The two steps are interleaved in one run, so that the machine's load affects both alike; the
last line is the median of the per-round time ratios: ``ratio <svi / plain>``.

    python benchmarks/bench_svi_step.py [--batch-size 256] [--rounds 200] [--device cpu]
"""

import argparse
import copy
import math
import statistics
import time

import pyro
import torch
import torch.nn.functional as F

from pyro_vae.build import build_vae
from pyro_vae.train import make_elbo

LOG_2PI = math.log(2 * math.pi)


def plain_loss(vae, x):
    """-ELBO summed over the batch, written out by hand: log q(z|x) - log p(z) - log p(x|z)."""
    enc, dec = vae.encoder, vae.likelihood.decoder
    loc, raw = enc.net(x).chunk(2, dim=-1)
    scale = F.softplus(raw) + enc.min_scale
    eps = torch.randn_like(loc)
    z = loc + scale * eps
    log_q = (-0.5 * eps**2 - scale.log() - 0.5 * LOG_2PI).sum()
    log_p = (-0.5 * z**2 - 0.5 * LOG_2PI).sum()
    rec = F.binary_cross_entropy_with_logits(dec(z), x, reduction="sum")
    return rec + log_q - log_p


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=200, help="timed steps of each kind")
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--validate", action="store_true",
                        help="keep Pyro's validation on in the timed steps (train.fit validates "
                        "only the first step of each run)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    pyro.set_rng_seed(0)

    svi_vae = build_vae((1, 28, 28), arch="mlp", latent_dim=50, hidden_dim=400).to(device)
    plain_vae = copy.deepcopy(svi_vae)
    svi_opt = torch.optim.Adam(svi_vae.parameters(), lr=1e-3)
    plain_opt = torch.optim.Adam(plain_vae.parameters(), lr=1e-3)
    elbo = make_elbo("trace")
    x = torch.bernoulli(torch.rand(args.batch_size, 1, 28, 28, device=device) * 0.3)

    def svi_step():
        with pyro.validation_enabled(args.validate):
            loss = elbo.differentiable_loss(svi_vae.model, svi_vae.guide, x)
        svi_opt.zero_grad(set_to_none=True)
        (loss / x.shape[0]).backward()
        svi_opt.step()
        return loss.item()

    def plain_step():
        loss = plain_loss(plain_vae, x)
        plain_opt.zero_grad(set_to_none=True)
        (loss / x.shape[0]).backward()
        plain_opt.step()
        return loss.item()

    def timed(step):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()  # .item() synchronizes
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        svi_step(), plain_step()
    ratios, t_svi, t_plain = [], [], []
    for r in range(args.rounds):
        # alternate which goes first, so that neither always follows the other
        if r % 2:
            a, b = timed(svi_step), timed(plain_step)
        else:
            b, a = timed(plain_step), timed(svi_step)
        t_svi.append(a)
        t_plain.append(b)
        ratios.append(a / b)

    med_svi, med_plain = statistics.median(t_svi), statistics.median(t_plain)
    q1, _, q3 = statistics.quantiles(ratios, n=4)
    print(f"device {device}, threads {torch.get_num_threads()}, batch {args.batch_size}, "
          f"784-400-50 MLP, {args.rounds} interleaved rounds")
    print(f"svi step    median {med_svi * 1e3:8.3f} ms   {args.batch_size / med_svi:10.0f} images/s")
    print(f"plain step  median {med_plain * 1e3:8.3f} ms   {args.batch_size / med_plain:10.0f} images/s")
    # the spread of the per-round ratios: on a shared machine the median moves by a few hundredths
    # from run to run, so a difference that small between two runs is noise
    print(f"per-round ratio quartiles {q1:.3f} .. {q3:.3f}")
    print(f"ratio {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    main()
