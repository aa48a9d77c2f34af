"""Every component docs/guide/components.md lists trains and evaluates end to end (issue:
reliability round three, item 1): evaluate.py's IWAE bounds, AIS, BDMC and the gap split on a tiny
run of each prior, likelihood and posterior of the registries, in this process."""

import json
import math

import numpy as np
import pytest

from pyro_vae.encoders import ENCODERS
from pyro_vae.likelihoods import LIKELIHOODS
from pyro_vae.priors import PRIORS

from test_reliability import TINY_SVI, call, digits, save_npz

# the data each likelihood's support takes: binary pixels drawn afresh, or grey levels
GREY = {"gaussian", "laplace", "beta", "continuous-bernoulli"}
COMPONENTS = ([("prior", p) for p in PRIORS] + [("likelihood", k) for k in LIKELIHOODS]
              + [("posterior", q) for q in ENCODERS if q != "diagonal"])
EVALUATE = ["--no-download", "--samples", "10", "--images", "6", "--curve", "1,10",
            "--curve-images", "4", "--ais-images", "3", "--ais-steps", "3", "--ais-chains", "2",
            "--leapfrog", "2", "--bdmc-images", "2", "--gap-images", "2"]


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    binary = save_npz(folder / "binary.npz", x_train=digits(60), x_test=digits(10, seed=1))
    grey = save_npz(folder / "grey.npz",
                    x_train=0.001 + 0.998 * digits(60).astype(np.float32) / 255,
                    x_test=0.001 + 0.998 * digits(10, seed=1).astype(np.float32) / 255)
    return {"binary": binary, "grey": grey}


def _finite(section):
    return all(v is None or not isinstance(v, float) or math.isfinite(v)
               for v in section.values())


@pytest.mark.parametrize("kind,name", COMPONENTS, ids=[f"{k}-{n}" for k, n in COMPONENTS])
def test_the_component_trains_and_evaluates_end_to_end(tmp_path, datasets, capsys, kind, name):
    grey = kind == "likelihood" and name in GREY
    run = tmp_path / "run"
    code = call("train_svi", *TINY_SVI, "--dataset", datasets["grey" if grey else "binary"],
                "--binarize", "none" if grey else "dynamic", f"--{kind}", name, "--out", run)
    assert code == 0, capsys.readouterr().err
    code = call("evaluate", run, *EVALUATE, "--out", tmp_path / "eval")
    assert code == 0, capsys.readouterr().err
    result = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert _finite(result["loglik"]) and result["loglik"]["num_images"] == 6
    assert len(result["ais"]["per_image"]) == 3 and _finite(result["ais"]["by_steps"]["3"])
    assert result["bdmc"]["3"]["num_images"] == 2 and _finite(result["bdmc"]["3"])
    assert result["inference_gap"]["num_images"] == 2 and _finite(result["inference_gap"])
