"""Every notebook runs top to bottom in smoke mode (PYRO_VAE_SMOKE=1), and is committed with the
outputs of a full run, which the documentation site shows."""

import os
import re

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


MODE_LINE = re.compile(r"^mode: (smoke|full)\b", re.MULTILINE)


def _stream_text(nb):
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_every_notebook_prints_its_mode(name):
    """The cell that reads PYRO_VAE_SMOKE prints ``mode: smoke`` or ``mode: full``, so that the
    committed outputs say which mode gave them."""
    nb = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    cell = next(c for c in nb.cells if c.cell_type == "code" and "PYRO_VAE_SMOKE" in c.source)
    assert "mode: {'smoke' if SMOKE else 'full'}" in cell.source


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_committed_notebook_has_its_outputs(name):
    """The committed notebook (read, not run) carries the outputs of a full run: at least one
    figure, no error, and the ``mode: full`` line, not ``mode: smoke``. The documentation site shows
    these stored outputs as they are."""
    nb = nbformat.read(os.path.join(FOLDER, name), as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert outputs, f"{name} is committed without outputs: run it in full mode and commit it"
    errors = [o.get("ename", "") for o in outputs if o.get("output_type") == "error"]
    assert not errors, f"{name} is committed with error outputs: {errors}"
    assert any("image/png" in o.get("data", {}) for o in outputs), f"{name} has no figure (image/png) output"
    modes = MODE_LINE.findall(_stream_text(nb))
    assert modes, f"{name}'s outputs do not say the mode they ran in (no 'mode: ...' line)"
    assert set(modes) == {"full"}, f"{name} is committed with the outputs of the smoke mode"
