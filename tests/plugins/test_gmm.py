"""The gmm toy: its analytic teacher is the exact posterior mean, and its metrics measure what they claim."""

import copy

import torch

from modalities.gmm import GaussianMixture, GmmModality
from unidistill.paths import RectifiedFlow, TrigFlow


def test_posterior_mean_of_one_component_is_the_gaussian_conditional_expectation():
    mix = GaussianMixture(dim=5, num_components=1, num_classes=1, seed=3)
    a, s = torch.tensor([0.6, 0.3]), torch.tensor([0.8, 1.1])
    x_t = torch.randn(2, 5)
    est = mix.posterior_mean(x_t, a, s)
    mu = mix.means[0]
    cov = mix.rotations[0] @ torch.diag(mix.eigvals[0]) @ mix.rotations[0].T
    for i in range(2):
        gain = a[i] * cov @ torch.linalg.inv(a[i] ** 2 * cov + s[i] ** 2 * torch.eye(5, dtype=torch.float64))
        exact = mu + gain @ (x_t[i].double() - a[i] * mu)
        assert torch.allclose(est[i].double(), exact, atol=1e-5)


def test_posterior_mean_matches_monte_carlo_of_the_mixture():
    """E[x0 | x_t] by importance weighting of prior samples agrees with the closed form."""
    mix = GaussianMixture(dim=3, num_components=4, num_classes=2, seed=1)
    g = torch.Generator().manual_seed(0)
    x0, _ = mix.sample(200_000, g)
    a, s = torch.tensor(0.7), torch.tensor(0.7)
    x_t = torch.tensor([[0.5, -0.3, 1.0]])
    logw = -((x_t - a * x0) ** 2).sum(1) / (2 * s**2)
    w = torch.softmax(logw.double(), 0)
    mc = (w[:, None] * x0.double()).sum(0)
    exact = mix.posterior_mean(x_t, a.reshape(1), s.reshape(1))[0].double()
    assert torch.allclose(mc, exact, atol=0.03)


def test_class_condition_restricts_to_its_components():
    m = GmmModality(GaussianMixture(dim=8, num_components=8, num_classes=4))
    T = m.load_teacher()
    x = torch.randn(16, 8) * 4
    labels = torch.full((16,), 2)
    t = torch.full((16,), 0.6)
    restricted = copy.copy(m.mixture)
    keep = m.mixture.classes == 2
    restricted.means, restricted.eigvals = m.mixture.means[keep], m.mixture.eigvals[keep]
    restricted.rotations, restricted.classes = m.mixture.rotations[keep], m.mixture.classes[keep]
    restricted.weights = m.mixture.weights[keep] / m.mixture.weights[keep].sum()
    expected = restricted.posterior_mean(x, m.path.alpha(t), m.path.sigma(t))
    assert torch.allclose(T(x, t, labels).x0, expected, atol=1e-5)
    assert not torch.allclose(T(x, t, None).x0, expected, atol=1e-2)
    assert torch.equal(T(x, torch.full((16,), 0.5), m.null_condition(labels)).x0,
                       T(x, torch.full((16,), 0.5), None).x0)


def test_the_analytic_teacher_agrees_across_paths():
    mix = GaussianMixture(dim=8)
    rf = GmmModality(mix, path="rectified_flow").load_teacher()
    trig = GmmModality(mix, path="trigflow").load_teacher()
    t_trig = torch.full((4,), 0.9)
    x0, eps = torch.randn(4, 8), torch.randn(4, 8)
    x_trig = TrigFlow().add_noise(x0, eps, t_trig)
    t_rf = RectifiedFlow().t_from_noise_ratio(TrigFlow().noise_ratio(t_trig))
    x_rf = x_trig * (RectifiedFlow().alpha(t_rf) / TrigFlow().alpha(t_trig))[:, None]
    assert torch.allclose(trig(x_trig, t_trig).x0, rf(x_rf, t_rf).x0, atol=1e-5)


def test_metrics_are_zero_for_identical_sets_and_detect_a_missing_mode():
    m = GmmModality(GaussianMixture(dim=8))
    g = torch.Generator().manual_seed(0)
    x, y = m.sample_data(4096, g)
    same = m.metrics(x, y, x)
    assert same["sliced_wasserstein"] == 0.0 and same["mode_coverage"] == 1.0
    fresh = m.metrics(m.sample_data(4096, g, y)[0], y, x)
    assert fresh["sliced_wasserstein"] < 0.05 and fresh["mode_coverage"] == 1.0
    dropped = x.clone()
    comp = m.mixture.assign(x)
    dropped[comp == 0] = x[comp == 1][: int((comp == 0).sum())]
    worse = m.metrics(dropped, y, x)
    assert worse["mode_coverage"] < 1.0 and worse["sliced_wasserstein"] > fresh["sliced_wasserstein"]


def test_student_init_applies_to_a_network_teacher_too(tmp_path):
    """``student_init`` is loaded by the core's ``build_student``, whatever the teacher is (it used to be skipped
    for a network teacher on gmm)."""
    from safetensors.torch import save_file

    mixture = GaussianMixture(dim=8, num_components=8, num_classes=4, seed=0)
    plain = GmmModality(mixture=mixture, teacher="tasks/gmm/weights/mlp_teacher.safetensors")
    teacher = plain.load_teacher()
    other = plain.new_denoiser().network  # same architecture, different (random) weights
    save_file(other.state_dict(), tmp_path / "init.safetensors")
    modality = GmmModality(mixture=mixture, teacher="tasks/gmm/weights/mlp_teacher.safetensors",
                           student_init=str(tmp_path / "init.safetensors"))
    student = modality.build_student(modality.load_teacher())
    for (name, p), q in zip(student.network.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    assert not all(torch.equal(a, b) for a, b in zip(student.parameters(), teacher.parameters(), strict=True))
    assert all(p.requires_grad for p in student.parameters())
