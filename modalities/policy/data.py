"""``PolicyDataModule``: windows of demonstration episodes for training, a held-out share for validation."""

from __future__ import annotations

import lightning as L
from torch.utils.data import DataLoader

from modalities.policy.demos import DemoSource, NpzDemos, WindowDataset
from unidistill.data import ResumableDataLoader


class PolicyDataModule(L.LightningDataModule):
    """Demonstrations from ``demos`` (a demo source or the path of an ``.npz`` file in the documented format),
    split by episode: the last ``val_episodes`` episodes are held out for validation."""

    def __init__(self, demos: DemoSource | str, horizon: int = 16, n_obs_steps: int = 2, batch_size: int = 256,
                 val_episodes: int = 8, val_batch_size: int = 256, seed: int = 0) -> None:
        super().__init__()
        self.demos = NpzDemos(demos) if isinstance(demos, str) else demos
        self.horizon, self.n_obs_steps = horizon, n_obs_steps
        self.batch_size, self.val_batch_size, self.seed = batch_size, val_batch_size, seed
        self.val_episodes = val_episodes

    def setup(self, stage: str | None = None) -> None:
        episodes = self.demos.episodes()
        if len(episodes) <= self.val_episodes:
            raise ValueError(f"{len(episodes)} episodes cannot leave {self.val_episodes} for validation")
        cut = len(episodes) - self.val_episodes
        self.train_set = WindowDataset(episodes[:cut], self.horizon, self.n_obs_steps)
        self.val_set = WindowDataset(episodes[cut:], self.horizon, self.n_obs_steps)

    def train_dataloader(self) -> ResumableDataLoader:
        return ResumableDataLoader(self.train_set, self.batch_size, seed=self.seed)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.val_batch_size, shuffle=False)
