"""Gaussian-mixture toy modality with an exact analytic teacher."""

from modalities.gmm.mixture import AnalyticDenoiserNet, GaussianMixture
from modalities.gmm.network import MLPDenoiserNet
from modalities.gmm.plugin import GmmModality

__all__ = ["AnalyticDenoiserNet", "GaussianMixture", "GmmModality", "MLPDenoiserNet"]
