"""The model protocol: what fit and the estimators ask of a model, and batches that carry labels
to a model's loss."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_vae.errors import ModelError
from pyro_vae.estimators import log_likelihood
from pyro_vae.protocol import check_model, model_inputs
from pyro_vae.train import fit, make_elbo


class LabelledToy(torch.nn.Module):
    """z ~ N(0, 1), x | z ~ N(z, 1) per pixel; the model and guide take the labels too, and
    check that each image's label is its own: the images are x[i] = label[i] + noise."""

    batch_fields = ("x", "y")
    max_plate_nesting = 1

    def __init__(self):
        super().__init__()
        self.loc = torch.nn.Parameter(torch.zeros(1))
        self.seen = 0

    def _check(self, x, y):
        assert x.shape[0] == y.shape[0]
        assert torch.equal(x.round().long(), y[:, None].expand_as(x))  # aligned rows
        self.seen += x.shape[0]

    def model(self, x, y, kl_scale=1.0):
        self._check(x, y)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], 1), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z + self.loc, 1.0).expand(x.shape).to_event(1), obs=x)

    def guide(self, x, y, kl_scale=1.0):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.mean(-1, keepdim=True) * 0.5, 0.7).to_event(1))


def test_labels_reach_model_and_guide_aligned_with_their_images():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 5, (40,), generator=g)
    x = y[:, None].float().expand(40, 3) + 0.1 * torch.rand(40, 3, generator=g)
    toy = LabelledToy()
    opt = torch.optim.Adam(toy.parameters(), lr=1e-2)
    rows = fit(toy, make_elbo("trace"), opt, {"x": x, "y": y}, {"x": x[:8], "y": y[:8]},
               epochs=2, batch_size=7, binarize="none", generator=g, progress=False)
    assert len(rows) == 2 and toy.seen >= 2 * 40  # every training image (and the test ones)
    assert toy.loc.detach().abs().item() > 0  # it trained


def test_a_model_of_images_and_labels_refuses_images_alone():
    with pytest.raises(ModelError, match="takes x, y but the data hold images alone"):
        model_inputs(LabelledToy(), torch.zeros(2, 3))
    with pytest.raises(ModelError, match="takes 'y' but the batches hold only x"):
        model_inputs(LabelledToy(), {"x": torch.zeros(2, 3)})


def test_an_object_without_a_guide_is_refused_in_one_line():
    class NoGuide:
        def model(self, x):
            pass

    with pytest.raises(ModelError, match=r"\(NoGuide\) has no 'guide': a model offers model, "
                                         "guide"):
        fit(NoGuide(), make_elbo("trace"), None, torch.zeros(2, 3), torch.zeros(2, 3), epochs=1,
            batch_size=1, binarize="none", generator=None, progress=False)
    with pytest.raises(ModelError, match="has no 'encode'"):
        check_model(LabelledToy(), drawn=True)


def test_a_users_model_offering_only_model_and_guide_trains_and_is_estimated():
    class Plain(torch.nn.Module):  # no batch_fields, no max_plate_nesting, no views
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(1))

        def model(self, x, kl_scale=1.0):
            with pyro.plate("data", x.shape[0]):
                z = pyro.sample("z", dist.Normal(torch.zeros(x.shape[0]), 1.0))
                loc = (self.w * z).unsqueeze(-1).expand(z.shape + x.shape[-1:])
                pyro.sample("x", dist.Normal(loc, 1.0).to_event(1), obs=x)

        def guide(self, x, kl_scale=1.0):
            with pyro.plate("data", x.shape[0]):
                pyro.sample("z", dist.Normal(x.mean(-1), 1.0))

    plain, x = Plain(), torch.randn(20, 2)
    rows = fit(plain, make_elbo("trace"), torch.optim.Adam(plain.parameters(), lr=1e-2), x,
               x[:5], epochs=1, batch_size=5, binarize="none",
               generator=torch.Generator().manual_seed(0), progress=False)
    assert rows[0]["epoch"] == 1
    est = log_likelihood(plain.model, plain.guide, x[:3], 50)
    assert est.per_image.shape == (3,) and torch.isfinite(est.per_image).all()
