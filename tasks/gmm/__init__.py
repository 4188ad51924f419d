"""The Gaussian-mixture task: data drawn from the mixture, a shipped MLP teacher, exact metrics."""

from tasks.gmm.data import GmmDataModule

__all__ = ["GmmDataModule"]
