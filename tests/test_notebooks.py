"""Every notebook runs top to bottom in smoke mode (PYRO_VAE_SMOKE=1)."""

import os

import nbformat
import pytest
from nbclient import NotebookClient

from conftest import ROOT

NOTEBOOKS = ["conv_autoencoder_mnist.ipynb", "denoising_autoencoder.ipynb", "marginal_likelihood.ipynb",
             "swap_priors_and_likelihoods.ipynb", "structured_vaes.ipynb"]
FOLDER = os.path.join(ROOT, "notebooks")


def test_every_notebook_is_tested():
    assert sorted(f for f in os.listdir(FOLDER) if f.endswith(".ipynb")) == sorted(NOTEBOOKS)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_in_smoke_mode(name, monkeypatch):
    monkeypatch.setenv("PYRO_VAE_SMOKE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": FOLDER}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
