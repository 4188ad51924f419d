"""Specification tests for Denoiser, classifier-free guidance, OnPath and the guidance embedding
(unidistill/denoiser.py), on the exact Gaussian-mixture teacher."""

from __future__ import annotations

import math

import pytest
import torch

from modalities.gmm import AnalyticDenoiserNet, GaussianMixture, GmmModality
from unidistill.denoiser import (
    Adapter,
    Denoiser,
    GuidedDenoiser,
    OnPath,
    combine_guidance,
    freeze,
    guidance_embedding,
)
from unidistill.paths import EDM, PATHS, Prediction, RectifiedFlow, TrigFlow, VPCosine, VPDiscrete, expand_like


@pytest.fixture(scope="module")
def gmm():
    m = GmmModality(GaussianMixture(dim=8))
    return m, m.load_teacher()


@pytest.fixture
def batch():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, 8, generator=gen)
    t = 0.05 + 0.9 * torch.rand(32, generator=gen)
    labels = torch.randint(0, 4, (32,), generator=gen)
    return x, t, labels


# --- classifier-free guidance ------------------------------------------------------------------------


def test_guidance_scale_one_is_the_conditional_model(gmm, batch):
    m, teacher = gmm
    x, t, labels = batch
    c = teacher(x, t, labels)
    for scale in (1.0, torch.tensor(1.0), torch.ones(32)):
        g = GuidedDenoiser(teacher, scale, m.null_condition)
        assert g.nfe_per_call == 1
        out = g(x, t, labels)
        assert torch.equal(out.x0, c.x0) and torch.equal(out.eps, c.eps)


def test_guidance_scale_zero_is_the_unconditional_model(gmm, batch):
    m, teacher = gmm
    x, t, labels = batch
    u = teacher(x, t, torch.full_like(labels, -1))
    g = GuidedDenoiser(teacher, 0.0, m.null_condition)
    assert g.nfe_per_call == 2
    out = g(x, t, labels)
    assert torch.equal(out.x0, u.x0) and torch.equal(out.eps, u.eps)
    # conditional and unconditional really differ here, so the identities above are not vacuous
    assert float((teacher(x, t, labels).x0 - u.x0).abs().max()) > 0.1


def test_guidance_scale_three_is_u_plus_three_c_minus_u(gmm, batch):
    m, teacher = gmm
    x, t, labels = batch
    c, u = teacher(x, t, labels), teacher(x, t, torch.full_like(labels, -1))
    out = GuidedDenoiser(teacher, 3.0, m.null_condition)(x, t, labels)
    torch.testing.assert_close(out.x0, u.x0 + 3 * (c.x0 - u.x0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out.eps, u.eps + 3 * (c.eps - u.eps), rtol=1e-6, atol=1e-6)
    # the guided pair still lies on the path: x_t = alpha x0 + sigma eps
    path = teacher.path
    x_rebuilt = expand_like(path.alpha(t), x) * out.x0 + expand_like(path.sigma(t), x) * out.eps
    torch.testing.assert_close(x_rebuilt, x, rtol=1e-5, atol=1e-5)


def test_per_sample_guidance_scale(gmm, batch):
    m, teacher = gmm
    x, t, labels = batch
    w = torch.linspace(0.0, 4.0, 32)
    out = GuidedDenoiser(teacher, w, m.null_condition)(x, t, labels)
    for i in (0, 7, 31):
        ref = GuidedDenoiser(teacher, float(w[i]), m.null_condition)(x[i : i + 1], t[i : i + 1], labels[i : i + 1])
        torch.testing.assert_close(out.x0[i : i + 1], ref.x0, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(out.eps[i : i + 1], ref.eps, rtol=1e-6, atol=1e-6)


def test_per_sample_guidance_scale_broadcasts_over_any_latent():
    gen = torch.Generator().manual_seed(1)
    c = torch.randn(2, 3, 4, 5, 5, generator=gen)
    u = torch.randn(2, 3, 4, 5, 5, generator=gen)
    w = torch.tensor([0.5, 2.0])
    out = combine_guidance(Prediction(c, c), Prediction(u, u), w)
    torch.testing.assert_close(out.x0[1], u[1] + 2.0 * (c[1] - u[1]))
    torch.testing.assert_close(out.eps[0], u[0] + 0.5 * (c[0] - u[0]))


def test_guided_velocity_is_path_velocity_of_guided_prediction(gmm, batch):
    m, teacher = gmm
    x, t, labels = batch
    g = GuidedDenoiser(teacher, 2.5, m.null_condition)
    pred = g(x, t, labels)
    torch.testing.assert_close(g.velocity(x, t, labels), teacher.path.velocity(pred.x0, pred.eps, t))


# --- OnPath --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", [TrigFlow(sigma_data=0.5), VPCosine()], ids=["trigflow", "vp_cosine"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_on_path_equals_analytic_denoiser_on_that_path(gmm, target, dtype):
    m, teacher = gmm  # built on RectifiedFlow, predicting x0
    assert isinstance(teacher.path, RectifiedFlow)
    direct = Denoiser(AnalyticDenoiserNet(m.mixture, target), target, "x0")
    view = OnPath(teacher, target)
    gen = torch.Generator().manual_seed(2)
    n = 64
    x0, _ = m.mixture.sample(n, gen)
    eps = torch.randn(n, 8, generator=gen)
    labels = torch.randint(-1, 4, (n,), generator=gen)
    # points of the target path, including both ends of its range
    t = torch.cat([torch.tensor([target.t_max, 0.999 * target.t_max, 0.01 * target.t_max], dtype=torch.float64),
                   (0.02 + 0.96 * torch.rand(n - 3, generator=gen, dtype=torch.float64)) * target.t_max]).to(dtype)
    x_t = target.add_noise(x0.to(dtype), eps.to(dtype), t)
    a, b = view(x_t, t, labels), direct(x_t, t, labels)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    torch.testing.assert_close(a.x0, b.x0, rtol=tol, atol=tol)
    # eps is recovered from x0 through 1/sigma, so compare it where sigma is not tiny
    far = t > 0.05 * target.t_max
    torch.testing.assert_close(a.eps[far], b.eps[far], rtol=10 * tol, atol=10 * tol)
    torch.testing.assert_close(view.velocity(x_t, t, labels)[far], direct.velocity(x_t, t, labels)[far],
                               rtol=10 * tol, atol=10 * tol)
    assert view.nfe_per_call == 1


def test_on_path_per_frame_time(gmm):
    """OnPath maps a [B, T] time onto the source path per frame."""
    m, teacher = gmm
    target = TrigFlow()
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 3, 8, generator=gen)
    t = (0.1 + 0.8 * torch.rand(4, 3, generator=gen)) * target.t_max

    class FrameNet(torch.nn.Module):
        """Applies a per-vector analytic denoiser frame by frame."""

        def __init__(self, path):
            super().__init__()
            self.inner = AnalyticDenoiserNet(m.mixture, path)

        def forward(self, x, t, cond=None):
            return self.inner(x.reshape(-1, 8), t.reshape(-1)).reshape(x.shape)

    src = Denoiser(FrameNet(RectifiedFlow()), RectifiedFlow(), "x0")
    out = OnPath(src, target)(x, t)
    direct = Denoiser(AnalyticDenoiserNet(m.mixture, target), target, "x0")(x.reshape(-1, 8), t.reshape(-1))
    torch.testing.assert_close(out.x0.reshape(-1, 8), direct.x0, rtol=1e-5, atol=1e-5)


# --- Denoiser --------------------------------------------------------------------------------------------


class _Affine(torch.nn.Module):
    """A fixed, input-dependent 'network' on any latent shape; a non-None condition changes its output."""

    def forward(self, x, t, cond=None):
        out = torch.tanh(x) * 0.7 + expand_like(t, x) * 0.1
        return out if cond is None else out + 0.2 * torch.sin(x)


@pytest.mark.parametrize("path_name", list(PATHS))
@pytest.mark.parametrize("prediction", ["eps", "x0", "flow"])
def test_velocity_equals_path_velocity(path_name, prediction):
    path = PATHS[path_name]()
    den = Denoiser(_Affine(), path, prediction)
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(5, 3, 4, 4, generator=gen, dtype=torch.float64)
    t = (0.1 + 0.8 * torch.rand(5, generator=gen, dtype=torch.float64)) * path.t_max
    pred = den(x, t)
    torch.testing.assert_close(den.velocity(x, t), path.velocity(pred.x0, pred.eps, t))
    raw = den.raw(x, t)
    if prediction == "flow":  # the velocity of a flow-predicting network is its raw output
        torch.testing.assert_close(den.velocity(x, t), raw, rtol=1e-10, atol=1e-10)
    elif prediction == "x0":
        assert torch.equal(pred.x0, raw)
    else:
        assert torch.equal(pred.eps, raw)


def test_denoiser_time_handling():
    path = RectifiedFlow()
    den = Denoiser(_Affine(), path, "x0")
    x = torch.randn(3, 2, 4)
    # a python scalar time is broadcast to [B]
    torch.testing.assert_close(den(x, 0.3).x0, den(x, torch.full((3,), 0.3)).x0)
    with pytest.raises(ValueError, match="does not lead the latent shape"):
        den(x, torch.full((4,), 0.3))
    with pytest.raises(ValueError, match="unknown prediction type"):
        Denoiser(_Affine(), path, "score")


def test_adapter_time_scale_and_guidance_kwarg():
    seen = {}

    class Net(torch.nn.Module):
        def forward(self, x, t, cond=None, guidance=None):
            seen.update(t=t, cond=cond, guidance=guidance)
            return x

    den = Denoiser(Net(), VPDiscrete(), "eps", Adapter(time_scale=1000.0))
    x = torch.randn(2, 4)
    den(x, torch.tensor([0.25, 0.5]), cond="c", guidance=torch.tensor([2.0, 3.0]))
    torch.testing.assert_close(seen["t"], torch.tensor([250.0, 500.0]))
    assert seen["cond"] == "c"
    torch.testing.assert_close(seen["guidance"], torch.tensor([2.0, 3.0]))


def test_freeze():
    net = torch.nn.Linear(3, 3)
    net.train()
    freeze(net)
    assert not net.training
    assert not any(p.requires_grad for p in net.parameters())


# --- guidance embedding -----------------------------------------------------------------------------


def test_guidance_embedding_shape_and_values():
    w = torch.tensor([0.0, 1.0, 1.5, 3.0, 7.5])
    emb = guidance_embedding(w, 64)
    assert emb.shape == (5, 64)
    torch.testing.assert_close(emb[0], torch.cat([torch.zeros(32), torch.ones(32)]))  # w = 0: sin 0, cos 0
    assert torch.allclose(emb.pow(2)[:, :32] + emb.pow(2)[:, 32:], torch.ones(5, 32), atol=1e-5)
    # LCM: angle_j = 1000 w * 10000^(-j / (half - 1))
    torch.testing.assert_close(emb[3, 0], torch.tensor(math.sin(3000.0)), rtol=1e-4, atol=1e-4)
    d = torch.cdist(emb, emb)
    assert bool((d + torch.eye(5) > 1e-2).all())  # distinct w -> distinct embeddings
    assert guidance_embedding(torch.tensor(2.0), 8).shape == (1, 8)


def test_guidance_embedding_rejects_odd_dim():
    with pytest.raises(ValueError, match="even"):
        guidance_embedding(torch.tensor([1.0]), 33)


def test_edm_denoiser_round_trip_through_guidance():
    """Guidance on a non-unit-variance path still yields a point-consistent (x0, eps) pair."""
    path = EDM()
    den = Denoiser(_Affine(), path, "eps")
    g = GuidedDenoiser(den, 4.0, lambda c: None)
    x = torch.randn(3, 2, 5, dtype=torch.float64)
    t = torch.tensor([0.5, 3.0, 40.0], dtype=torch.float64)
    out, c, u = g(x, t, "cond"), den(x, t, "cond"), den(x, t, None)
    assert float((c.eps - u.eps).abs().max()) > 0.1
    torch.testing.assert_close(out.eps, u.eps + 4.0 * (c.eps - u.eps))
    torch.testing.assert_close(out.x0 + expand_like(t, x) * out.eps, x)
