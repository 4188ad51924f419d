"""The mutations ``tests/support/mutations.py`` applies: one-line formula bugs and the fast tests that must catch them.

The first eighteen are the kinds issue #20 found surviving the tests of the time; the rest cover every objective,
the data-fidelity terms and the residual-shifting path.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mutation:
    file: str  # relative to the repository root, e.g. unidistill/objectives/scm.py
    original: str  # must occur exactly once in the file
    replacement: str
    description: str
    tests: tuple[str, ...]  # test files (or node ids) that must fail


C = "tests/unit/test_formulas_consistency.py"
D = "tests/unit/test_formulas_distribution.py"
T = "tests/unit/test_formulas_trajectory.py"
K = "tests/unit/test_formulas_causal.py"
F = "tests/unit/test_fidelity.py"
R = "tests/unit/test_residual_shift_path.py"
OBJ = "unidistill/objectives/"


def _m(file: str, original: str, replacement: str, description: str, *tests: str) -> Mutation:
    return Mutation(
        OBJ + file if not file.startswith("unidistill/") else file, original, replacement, description, tests
    )


MUTATIONS = [
    # --- the survivors -------------------------------------------------------------------------------
    _m("scm.py", "- r * c * s * x_t", "+ r * c * s * x_t", "sCM: sign of the x_t term of the tangent", C),
    _m("scm.py", "g = -c * c * (self.sigma_data", "g = -c * (self.sigma_data", "sCM: cos t instead of cos^2 t", C),
    _m("scm.py", "w = 1.0 / (self.sigma_data * torch.tan(t))", "w = (self.sigma_data * torch.tan(t))",
       "sCM: prior weight inverted", C),
    _m("flow_map.py", "return v - warm * expand_like", "return v + warm * expand_like",
       "MeanFlow: + instead of - in the identity", C),
    _m("flow_map.py", "(v, torch.ones_like(t), torch.zeros_like(r))", "(v, torch.zeros_like(t), torch.ones_like(r))",
       "MeanFlow: JVP tangent on r instead of t", C),
    _m("dmd.py", "(self.guidance_scale - 1) * (u.x0 - c.x0)", "(self.guidance_scale - 1) * (c.x0 - u.x0)",
       "decoupled DMD: CA term sign", D),
    _m("dmd.py", "mu_real = ctx.guided_teacher(self.guidance_scale)(x_t, t, cond).x0",
       "mu_real = teacher(x_t, t, cond).x0",
       "DMD: classifier-free guidance dropped from the real score", D),
    _m("dmd.py", "disc = softplus_discriminator(l_real, l_fake)", "disc = softplus_discriminator(l_fake, l_real)",
       "f-distill / DMD2 GAN: discriminator labels swapped", D),
    _m("dmd.py", "g = g * expand_like(h, g)", "g = g / expand_like(h, g)", "f-distill: 1/h applied instead of h", D),
    _m("sid.py", "(mu_r - x) - self.alpha * diff", "(mu_r - x) + self.alpha * diff",
       "SiD: +alpha instead of -alpha", D),
    _m("sid.py", "n = mean_abs_normaliser(x, mu_r, batch.mask)", "n = mean_abs_normaliser(x, mu_f, batch.mask)",
       "SiD: normaliser built from the fake score", D),
    _m("reflow.py", "x_t = path.add_noise(x1, noise, t)\n            target",
       "x_t = path.add_noise(noise, x1, t)\n            target",
       "reflow: interpolation with noise and data swapped", T),
    _m("reflow.py", "Prediction(x1, noise), t, student.prediction", "Prediction(noise, x1), t, student.prediction",
       "reflow: target with noise and data swapped", T),
    _m("dmd.py", "gan = softplus_generator(logits)", "gan = softplus_generator(-logits)",
       "DMD2: GAN generator sign", D),
    _m("dmd.py", "g = (mu_fake - mu_real) / mean_abs_normaliser", "g = (mu_real - mu_fake) / mean_abs_normaliser",
       "DMD: direction sign", D),
    _m("dmd.py", "g = (mu_fake - mu_real) / mean_abs_normaliser(x, mu_real, mask)",
       "g = (mu_fake - mu_real) / mean_abs_normaliser(x, mu_fake, mask)",
       "DMD: normaliser from the fake score", D),
    _m("scm.py", "torch.exp(-logvar) * weighted + logvar", "torch.exp(logvar) * weighted + logvar",
       "sCM: adaptive weight e^{+l} instead of e^{-l}", C),
    _m("flow_map.py", 'per = per_sample(sq, batch.mask, "sum")', 'per = per_sample(sq, batch.mask, "mean")',
       "MeanFlow: adaptive weight on the per-element mean", C),
    # --- consistency family --------------------------------------------------------------------------------------
    _m("scm.py", '"sum" if self.tangent_norm == "l2" else "mean"', '"mean" if self.tangent_norm == "l2" else "sum"',
       "sCM: L2 and RMS tangent norms swapped", C),
    _m("scm.py", "(expand_like(cs, x) * dxdt, cs)", "(dxdt, cs)", "sCM: JVP x-tangent without cos t sin t", C),
    _m("scm.py", "- r * self.sigma_data * dF", "- self.sigma_data * dF", "sCM: warm-up missing on the JVP term", C),
    _m("flow_map.py", "weight = (per.detach() + self.adaptive_c) ** -self.adaptive_p",
       "weight = (per.detach() + self.adaptive_c) ** self.adaptive_p",
       "MeanFlow: adaptive weight exponent sign", C),
    _m("flow_map.py", "t, r = torch.maximum(a, b), torch.minimum(a, b)",
       "r, t = torch.maximum(a, b), torch.minimum(a, b)",
       "MeanFlow: r above t", C),
    _m("consistency.py", "c_skip = expand_like(sd2 / (tau**2 + sd2), x_t)",
       "c_skip = expand_like(sd2 / (tau + sd2), x_t)",
       "consistency function: c_skip", C),
    _m("consistency.py", "return grid[idx], grid[idx - self.skip]", "return grid[idx], grid[idx - 1]",
       "consistency distillation: skip ignored", C),
    _m("consistency.py", "GuidedDenoiser(ctx.teacher, w, ctx.null_condition), x_hi",
       "GuidedDenoiser(ctx.teacher, 1.0, ctx.null_condition), x_hi",
       "consistency distillation: teacher unguided", C),
    _m("consistency.py", 'ConsistencyFunction(ctx.roles["target"], self.boundary_scale)',
       "ConsistencyFunction(student, self.boundary_scale)",
       "consistency distillation: target from the online student", C),
    _m("phased.py", "right=False) - 1", "right=False)", "phased CM: lands on the upper phase edge", C),
    _m("losses.py", "torch.sqrt(squared_error(pred, target, mask) + c * c) - c",
       "torch.sqrt(squared_error(pred, target, mask) + c) - c",
       "pseudo-Huber constant not squared", C),
    # --- distribution matching and adversarial ---------------------------------------------------------------
    _m("dmd.py", "return h / (h.mean() + 1e-6)", "return h", "f-distill: h not normalised by its batch mean", D),
    _m("dmd.py", "r = r / (total / (count + 1e-6) + 1e-6)[idx]", "r = r / (r.mean() + 1e-6)",
       "f-distill: ratio normalised over the batch, not per time bin", D),
    _m("dmd.py", "sample(ctx.guided_teacher(self.guidance_scale), z,", "sample(ctx.teacher, z,",
       "DMD regression: teacher pairs unguided", D),
    _m("dmd.py", "target = path.from_prediction(Prediction(x, eps), t, space)",
       "target = path.from_prediction(Prediction(eps, x), t, space)",
       "DMD2 fake score: target swapped", D),
    _m("dmd.py", "* t_in / teacher.path.t_max", "/ teacher.path.t_max", "decoupled DMD: CA time not below t_in", D),
    _m("losses.py", "return 0.5 * per_sample((x - target) ** 2", "return per_sample((x - target) ** 2",
       "DMD surrogate without the 1/2", D),
    _m("losses.py", "return F.softplus(-logits_real).mean() + F.softplus(logits_fake).mean()",
       "return F.softplus(logits_real).mean() + F.softplus(-logits_fake).mean()",
       "softplus discriminator signs", D),
    _m("adversarial.py", "loss = hinge_discriminator(l_real, l_fake)", "loss = hinge_discriminator(l_fake, l_real)",
       "adversarial: discriminator real/fake swapped", D),
    _m("adversarial.py", "adv = hinge_generator(logits)", "adv = -hinge_generator(logits)",
       "adversarial: generator sign", D),
    _m("adversarial.py", "c = expand_like(path.alpha(td), x)", "c = expand_like(path.sigma(td), x)",
       "ADD: distillation weight sigma instead of alpha", D),
    _m("dmd.py", "x = path.add_noise(x0, ctx.randn(x.shape), _full(times[j + 1], x))",
       "x = path.add_noise(x0, ctx.randn(x.shape), _full(times[j], x))",
       "backward simulation re-noises to the wrong time", D),
    _m("unidistill/denoiser.py", "uncond.x0 + w * (cond.x0 - uncond.x0)", "cond.x0 + w * (cond.x0 - uncond.x0)",
       "guidance in the c + w (c - u) convention", D),
    # --- progressive, reflow, trajectory, denoising ----------------------------------------------------------
    _m("progressive.py", "return grid[2 * j], grid[2 * j + 1], grid[2 * j + 2]",
       "return grid[2 * j], 0.5 * (grid[2 * j] + grid[2 * j + 2]), grid[2 * j + 2]",
       "progressive: t' the midpoint, off the teacher's EDM grid", T),
    _m("progressive.py", "ratio = s2 / s.clamp_min(1e-12)", "ratio = s / s2.clamp_min(1e-12)",
       "progressive: two-step target ratio inverted", T),
    _m("progressive.py", "snr.clamp(1.0, 1e4) if", "snr.clamp(0.0, 1e4) if",
       "progressive: SNR weight not truncated at 1", T),
    _m("progressive.py", "(snr + 1).clamp_max(1e4)", "snr.clamp_max(1e4)", "progressive: SNR+1 weight is SNR", T),
    _m("progressive.py", "tgt = GuidedDenoiser(ctx.teacher, w, ctx.null_condition)(z_t", "tgt = ctx.teacher(z_t",
       "guided progressive stage 1: target unguided", T),
    _m("reflow.py", "per = distance(student(x_t, t, cond).x0, x1,", "per = distance(student(x_t, t, cond).x0, noise,",
       "reflow distillation regresses on the noise", T),
    _m("trajectory.py", "t = grid.to(ctx.dtype)[j]\n            pred",
       "t = grid.to(ctx.dtype)[j + 1]\n            pred",
       "trajectory regression: student time one grid step off", T),
    _m("trajectory.py", "target = states[-1]", "target = states[-2]",
       "trajectory regression: target not the endpoint", T),
    _m("denoising.py", "keep = ctx.rand((batch.size,)) >= self.cond_dropout",
       "keep = ctx.rand((batch.size,)) < self.cond_dropout",
       "condition dropout keeps the dropped share", T),
    _m("unidistill/paths.py", "return self._karras(u, self.t_max)", "return u * self.t_max",
       "EDM time positions uniform in sigma", T),
    _m("unidistill/timesteps.py", "return path.time_at(self.t_min + (self.t_max - self.t_min) * u).float()",
       "return ((self.t_min + (self.t_max - self.t_min) * u) * path.t_max).float()",
       "time samplers ignore the path's positions (uniform in sigma on EDM)", T),
    # --- causal ----------------------------------------------------------------------------------------------
    _m("causal.py", "t = grid.to(ctx.dtype)[j]\n        per", "t = grid.to(ctx.dtype)[j + 1]\n        per",
       "CausVid regression: student time one grid step off", K),
    _m("causal.py", "repeat_interleave(k, dim=1)[:, : x0.shape[1]]", "repeat(1, k)[:, : x0.shape[1]]",
       "diffusion forcing: times not constant within a chunk", K),
    _m("causal.py", "                run.commit(gt)", "                run.commit(outs[-1])",
       "teacher forcing: context is the student's output", K),
    _m("causal.py", "target = net.path.from_prediction((x0, eps), t, net.prediction)",
       "target = net.path.from_prediction((eps, x0), t, net.prediction)",
       "diffusion forcing: target with data and noise swapped", K),
    # --- the guided teacher, wherever it is queried ------------------------------------------------------------
    _m("scm.py", "OnPath(GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition), self.trig)",
       "OnPath(ctx.teacher, self.trig)",
       "sCM: teacher velocity unguided", C),
    _m("flow_map.py", "v = GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition).velocity(",
       "v = ctx.teacher.velocity(",
       "MeanFlow: teacher velocity unguided", C),
    _m("reflow.py", "return GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition)", "return ctx.teacher",
       "reflow: couplings from the unguided teacher", T),
    _m("trajectory.py", "teacher = GuidedDenoiser(ctx.teacher, self.guidance_scale, ctx.null_condition)",
       "teacher = ctx.teacher",
       "trajectory regression: teacher ODE unguided", T),
    _m("dmd.py", '"js": lambda r: r / (1 + r),', '"js": lambda r: 1 / (1 + r),', "f-distill: JS weight h(r)", D),
    # --- data fidelity (OSEDiff's L2 + perceptual terms) and ResShift's residual-shifting path ------------------
    _m("fidelity.py", "loss = loss + self.perceptual_weight * per.mean()", "loss = loss + per.mean()",
       "fidelity: perceptual weight not applied", F),
    _m("fidelity.py", "l2 = squared_error(pred, batch.x0, batch.mask).mean()",
       "l2 = squared_error(pred, batch.x0).mean()", "fidelity: the L2 term ignores the mask", F),
    _m("dmd.py", "fid, fid_logs = self.fidelity(x, batch)", "fid, fid_logs = self.fidelity(x.detach(), batch)",
       "DMD2: fidelity gradient cut from the student", F),
    _m("fidelity.py", "meas = squared_error(a_pred, a_data).mean()", "meas = squared_error(pred, batch.x0).mean()",
       "fidelity: the measurement term compares the undegraded pair", F),
    _m("fidelity.py", "loss = loss + self.measurement_weight * meas", "loss = loss + meas",
       "fidelity: measurement weight not applied", F),
    _m("unidistill/paths.py", "return self.kappa * self.sqrt_eta(t)[0]", "return self.kappa * self.eta(t)",
       "ResidualShift: sigma = kappa eta instead of kappa sqrt(eta)", R),
    _m("unidistill/paths.py", "return -2 * s * ds", "return -s * ds", "ResidualShift: d alpha / dt missing 2", R),
]
