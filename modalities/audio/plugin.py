"""The ``audio`` modality: text-to-speech / text-to-audio on fixed-length mono windows.

Data batches are dicts ``{"audio": [B, N] waveforms in [-1, 1], "prompt": list[str]}`` with optional
``"labels": {name: [B] ints}`` (passed through to the task's evaluator, -1 = unknown) and ``"sample_rate"``
(checked against the latent's). ``to_batch`` fits each waveform to the latent window, encodes it with the
configured ``AudioLatent`` (log-mel by default) and the prompts with the text encoder, giving the condition
``{"emb": [B, L, D] token states, "pooled": [B, D] sentence embedding, "prompt_id": [B], "labels": {...}}``.
The null condition of classifier-free guidance is the empty prompt.

The network is ``SpeechDiT`` (diffusers' ``StableAudioDiTModel``) on a rectified-flow path by default. Quality
comes from a task ``AudioEvaluator`` that reads log-mel spectrograms in its own mel settings (for a mel latent
with those settings they are the denormalised latents, otherwise the decoded audio is transformed again).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path as FilePath
from typing import Any, Protocol

import torch
from torch import Tensor

from modalities.audio.latents import AudioLatent
from modalities.audio.mel import MelLatent
from modalities.audio.network import NETWORK_DEFAULTS, SpeechDiT, SpeechDiTAdapter
from modalities.audio.spectrogram import save_spectrograms
from modalities.audio.wav import write_wav
from unidistill.batch import Batch
from unidistill.denoiser import Denoiser, freeze
from unidistill.modality import Modality
from unidistill.paths import PATHS, Path, check_prediction_type
from unidistill.weights import load_safetensors


class AudioEvaluator(Protocol):
    """What a task supplies for quality: metrics of log-mel spectrograms in its own mel settings."""

    name: str
    mel: MelLatent
    regression_metric: tuple[str, bool]

    def metrics(self, log_mel: Tensor, labels: dict[str, Tensor] | None,
                reference: Tensor | None) -> dict[str, float]: ...


class AudioModality(Modality):
    """Text-conditioned audio latents ``[B, channels, frames]``.

    Args:
        latent: the representation (``MelLatent`` by default, ``WaveformLatent``, ``OobleckLatent``, or your own
            ``AudioLatent``).
        network: ``SpeechDiT`` size overrides (``patch``, ``width``, ``layers``, ``heads``, ``kv_heads``,
            ``cross_dim``, ``time_dim``).
        path, prediction: the noise path (a name in ``unidistill.paths.PATHS``) and the network's prediction type.
        teacher: safetensors weights of a trained teacher (with its card beside it), or ``"random:<seed>"``
            (a seeded random network, for tests and the regression matrix).
        student_init: safetensors to start the student from (or, when training a teacher, to continue from).
        text_encoder: a local transformers folder or ``minilm``; ``None`` for embedding-conditioned instances
            (``tiny``), whose conditions carry ready-made embeddings of size ``text_dim``.
        max_prompt_length: tokens per prompt (longer prompts are truncated with a warning).
        evaluator: the task's metric provider (``AudioEvaluator``).
        student_guidance: the guidance scale a guidance-conditioned student (consistency distillation with a
            ``guidance_range``) samples at when no scale is passed; recorded in its exported card.
    """

    name = "audio"

    def __init__(self, latent: AudioLatent | None = None, network: dict[str, int] | None = None,
                 path: str = "rectified_flow", prediction: str = "flow", teacher: str = "random:0",
                 student_init: str | None = None, text_encoder: str | None = "minilm", max_prompt_length: int = 24,
                 text_dim: int = 384, evaluator: AudioEvaluator | None = None,
                 student_guidance: float | None = None) -> None:
        if path not in PATHS:
            raise ValueError(f"unknown path {path!r}; valid: {', '.join(PATHS)}")
        unknown = sorted(set(network or {}) - set(NETWORK_DEFAULTS) - {"patch"})
        if unknown:
            raise ValueError(f"unknown network option(s) {unknown}; valid: patch, {', '.join(NETWORK_DEFAULTS)}")
        if not (teacher.startswith("random:") or teacher.endswith(".safetensors")):
            raise ValueError(f"teacher={teacher!r}: give a .safetensors file or 'random:<seed>'")
        self.latent = latent or MelLatent()
        self.net_args = {**NETWORK_DEFAULTS, "patch": 1, **(network or {})}
        self.path: Path = PATHS[path]()
        self.prediction = check_prediction_type(prediction)
        self.teacher_source, self.student_init = teacher, student_init
        self.text_encoder_name, self.max_prompt_length, self.text_dim = text_encoder, max_prompt_length, text_dim
        self.evaluator, self.student_guidance = evaluator, student_guidance
        self._text: Any = None
        self._prompts: dict[str, int] = {}

    @property
    def regression_metric(self) -> tuple[str, bool] | None:
        """The task evaluator's choice (spoken words: ``fd_spoken_words``); without one, the first metric."""
        return getattr(self.evaluator, "regression_metric", None)

    # -- networks ------------------------------------------------------------------------------------------
    @property
    def latent_shape(self) -> tuple[int, int]:
        return self.latent.shape

    @property
    def guidance_input(self) -> bool:
        return True

    def network_config(self) -> dict[str, int]:
        channels, frames = self.latent_shape
        return {"channels": channels, "frames": frames, "text_dim": self.text_dim, **self.net_args}

    def new_network(self) -> SpeechDiT:
        return SpeechDiT(**self.network_config())

    def _denoiser(self, network: SpeechDiT, default_guidance: float | None = None) -> Denoiser:
        return Denoiser(network, self.path, self.prediction, SpeechDiTAdapter(default_guidance))

    def card_fields(self) -> dict[str, Any]:
        """What a weights card must agree on for this modality to read the weights (``check_card``): a teacher
        trained on other latents (another mel configuration or normalisation) samples garbage without a shape
        error, so the latent's settings are part of it."""
        return {"modality": self.name, "path": repr(self.path), "prediction": self.prediction,
                "latent": self.latent.card(), "network_config": self.network_config()}

    def new_denoiser(self) -> Denoiser:
        """A trainable denoiser (teacher training); it starts from ``student_init`` when that is set, so a teacher
        recipe can continue from earlier weights."""
        den = self._denoiser(self.new_network())
        if self.student_init is not None:
            load_safetensors(den.network, self.student_init, "initialisation", card=self.card_fields())
        return den

    def load_teacher(self) -> Denoiser:
        if self.teacher_source.startswith("random:"):
            with torch.random.fork_rng():
                torch.manual_seed(int(self.teacher_source.split(":", 1)[1]))
                den = self._denoiser(self.new_network())
        else:
            den = self._denoiser(self.new_network())
            load_safetensors(den.network, self.teacher_source, "audio teacher", card=self.card_fields())
        return freeze(den)

    def build_student(self, teacher: Denoiser, guidance_conditioned: bool = False) -> Denoiser:
        """A trainable copy of the teacher, with the guidance input when asked for or when ``student_init`` has
        one (post-training a guidance-conditioned student, e.g. adversarially), then ``student_init`` loaded."""
        student = copy.deepcopy(teacher)
        takes_guidance = guidance_conditioned or bool(self._init_card().get("guidance_input"))
        if self.student_guidance is not None and not takes_guidance:
            raise ValueError(f"student_guidance={self.student_guidance} is only used by a guidance-conditioned "
                             "student (an objective with a guidance_range, or a student_init whose card has a "
                             "guidance input); this student has none: remove student_guidance")
        if takes_guidance:
            student.network.enable_guidance_conditioning()
        self.load_student_init(student.network)
        student.adapter = SpeechDiTAdapter(self.student_guidance)
        student.network.train()
        student.network.requires_grad_(True)
        return student

    def _init_card(self) -> dict[str, Any]:
        card = FilePath(self.student_init).with_suffix(".json") if self.student_init is not None else None
        return json.loads(card.read_text()) if card is not None and card.is_file() else {}

    def load_student_init(self, network: torch.nn.Module, card: dict[str, Any] | None = None) -> None:
        super().load_student_init(network, {**(card or {}), **self.card_fields()})

    def export(self, student: Denoiser, out_dir: str | FilePath, name: str = "student") -> list[FilePath]:
        """Safetensors plus a card that also records the latent and network settings (see ``card_fields``)."""
        files = super().export(student, out_dir, name)
        card = files[1]
        info = json.loads(card.read_text())
        info.update(self.card_fields())
        info["guidance_input"] = getattr(student.network, "guidance", None) is not None
        info["default_guidance"] = getattr(student.adapter, "default_guidance", None)
        card.write_text(json.dumps(info, indent=2))
        return files

    def load_student(self, weights: str | FilePath) -> Denoiser:
        """A frozen student from exported weights (``unidistill export``); a guidance input is added when its
        card says it has one, sampled at ``student_guidance`` or else the card's ``default_guidance``."""
        card = FilePath(weights).with_suffix(".json")
        info = json.loads(card.read_text()) if card.is_file() else {}
        guidance = self.student_guidance if self.student_guidance is not None else info.get("default_guidance")
        den = self._denoiser(self.new_network(), guidance)
        if info.get("guidance_input"):
            den.network.enable_guidance_conditioning()
        load_safetensors(den.network, weights, "audio student", card=self.card_fields())
        return freeze(den)

    # -- text ----------------------------------------------------------------------------------------------
    @property
    def text(self) -> Any:
        if self._text is None:
            if self.text_encoder_name is None:
                raise ValueError("this audio modality has no text encoder (text_encoder=None): pass conditions as "
                                 "embeddings, or set text_encoder=<folder|minilm>")
            from modalities.image.text import TextEncoder

            self._text = TextEncoder.shared(self.text_encoder_name, self.max_prompt_length)
            if self._text.hidden_size != self.text_dim:
                raise ValueError(f"text encoder hidden size {self._text.hidden_size} does not match text_dim "
                                 f"{self.text_dim}")
        return self._text

    def prompt_condition(self, prompts: list[str], labels: dict[str, Tensor] | None = None) -> dict[str, Any]:
        """The condition of a list of prompts (embeddings are cached per prompt)."""
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise ValueError(f"prompt {i} is empty ({p!r}); describe the audio to generate (the unconditional "
                                 "model is the null condition of guidance, not an empty prompt)")
        emb, pooled = self.text.encode_pooled(prompts)
        ids = torch.tensor([self._prompts.setdefault(p, len(self._prompts)) for p in prompts], dtype=torch.long)
        cond: dict[str, Any] = {"emb": emb, "pooled": pooled, "prompt_id": ids}
        if labels:
            cond["labels"] = {k: torch.as_tensor(v).long() for k, v in labels.items()}
        return cond

    def prompt_text(self, prompt_ids: Tensor) -> list[str]:
        names = {i: p for p, i in self._prompts.items()}
        return [names.get(int(i), "") for i in prompt_ids]

    def null_condition(self, cond: Any) -> Any:
        if cond is None:
            return None
        n = cond["emb"].shape[0]
        if self.text_encoder_name is not None:
            emb, pooled = self.text.encode_pooled([""])
            emb, pooled = emb.to(cond["emb"]), pooled.to(cond["pooled"])
        else:
            emb, pooled = torch.zeros_like(cond["emb"][:1]), torch.zeros_like(cond["pooled"][:1])
        out = {"emb": emb.expand(n, *emb.shape[1:]), "pooled": pooled.expand(n, *pooled.shape[1:])}
        if "prompt_id" in cond:
            out["prompt_id"] = torch.full_like(cond["prompt_id"], self._prompts.setdefault("", len(self._prompts)))
        if "labels" in cond:
            out["labels"] = {k: torch.full_like(v, -1) for k, v in cond["labels"].items()}
        return out

    # -- data <-> latents ----------------------------------------------------------------------------------
    def to_batch(self, data: Any) -> Batch:
        if isinstance(data, Batch):
            return super().to_batch(data)
        if not isinstance(data, dict) or "prompt" not in data:
            raise TypeError("audio batches are dicts {'audio': [B, N] waveforms, 'prompt': list[str], 'labels': "
                            f"{{...}}}}; got {type(data).__name__}")
        rate = data.get("sample_rate")
        rate = None if rate is None else int(torch.as_tensor(rate).reshape(-1)[0])
        if rate is not None and rate != self.latent.sample_rate:
            raise ValueError(f"audio at {rate} Hz; the {type(self.latent).__name__} expects "
                             f"{self.latent.sample_rate} Hz (resample it first)")
        wave = data.get("audio")
        x0 = self.encode(wave) if wave is not None else None
        cond = self.prompt_condition(list(data["prompt"]), data.get("labels"))
        if x0 is not None:
            self.check_latents(x0)
            cond = {k: ({n: v.to(x0.device) for n, v in c.items()} if isinstance(c, dict) else c.to(x0.device))
                    for k, c in cond.items()}
        return Batch(x0, cond)

    def encode(self, wave: Tensor) -> Tensor:
        """``[B, N]`` waveforms (any ``N``: shorter ones are padded, longer ones as the latent's ``overlong``)."""
        with torch.no_grad():
            return self.latent.encode(self.latent.fit_window(wave.float()))

    def decode(self, latents: Tensor) -> Tensor:
        """``[B, samples]`` waveforms in [-1, 1]."""
        return self.latent.decode(latents.detach().float())

    def evaluator_log_mel(self, latents: Tensor) -> Tensor:
        """The log-mel spectrograms the evaluator reads: the denormalised latents when they are log-mel in its
        settings, else its mel transform of the decoded audio."""
        mel = self.evaluator.mel
        latent = self.latent
        if isinstance(latent, MelLatent) and latent.transform_settings() == mel.transform_settings():
            return latent.denormalise(latents.detach().float())
        if latent.sample_rate != mel.sample_rate:
            raise ValueError(f"the evaluator reads {mel.sample_rate} Hz audio, the latent is {latent.sample_rate} Hz")
        return mel.log_mel(mel.fit_window(self.decode(latents)))

    # -- evaluation and samples ----------------------------------------------------------------------------
    def metrics(self, samples: Tensor, cond: Any, reference: Tensor | None) -> dict[str, float]:
        samples = samples.detach().float().cpu()
        out = {"latent_std": float(samples.std())}
        if reference is not None:
            out["latent_mean_gap"] = float((samples.mean() - reference.float().cpu().mean()).abs())
        if self.evaluator is not None:
            labels = cond.get("labels") if isinstance(cond, dict) else None
            ref = self.evaluator_log_mel(reference.float().cpu()) if reference is not None else None
            out.update(self.evaluator.metrics(self.evaluator_log_mel(samples), labels, ref))
        return out

    def captions(self, cond: Any, n: int) -> list[str]:
        if isinstance(cond, dict) and "prompt_id" in cond:
            return self.prompt_text(cond["prompt_id"][:n])
        return [""] * n

    def spectrograms(self, latents: Tensor) -> Tensor:
        """Log-mel spectrograms for pictures: the evaluator's, else the latent's own for a mel latent."""
        if self.evaluator is not None:
            return self.evaluator_log_mel(latents)
        if isinstance(self.latent, MelLatent):
            return self.latent.denormalise(latents.detach().float())
        return MelLatent(sample_rate=self.latent.sample_rate).log_mel(self.decode(latents)[:, :16128])

    def save_samples(self, samples: Tensor, cond: Any, out_dir: str | FilePath, limit: int = 16) -> list[FilePath]:
        """``sample_XX.wav`` for the first ``limit`` samples and one PNG of their captioned spectrograms."""
        out = FilePath(out_dir)
        x = samples[:limit].detach().float().cpu()
        waves = self.decode(x)
        files = [write_wav(out / f"sample_{i:02d}.wav", w, self.latent.sample_rate) for i, w in enumerate(waves)]
        files.append(save_spectrograms(self.spectrograms(x), out / "spectrograms.png", self.captions(cond, len(x))))
        return files

    def save_comparison(self, samples: dict[str, Tensor], cond: Any, out_dir: str | FilePath,
                        limit: int = 8) -> list[FilePath]:
        """WAVs per model (``<row>_<label>/prompt_XX.wav``) for the same prompts and seeds, and one PNG: a row
        per model, a column per prompt."""
        out = FilePath(out_dir)
        labels = list(samples)
        n = min(limit, *(x.shape[0] for x in samples.values()))
        prompts = self.captions(cond, n)
        files: list[FilePath] = []
        mels = []
        for i, label in enumerate(labels):
            x = samples[label][:n].detach().float().cpu()
            safe = "".join(ch if ch.isalnum() else "_" for ch in label)
            for j, w in enumerate(self.decode(x)):
                files.append(write_wav(out / f"{i:02d}_{safe}" / f"prompt_{j:02d}.wav", w, self.latent.sample_rate))
            mels.append(self.spectrograms(x))
        captions = [f"{label}: {p}" if j == 0 else p for label in labels for j, p in enumerate(prompts)]
        files.append(save_spectrograms(torch.cat(mels), out / "comparison.png", captions, columns=n))
        return files

    # -- regression matrix ---------------------------------------------------------------------------------
    @classmethod
    def tiny(cls) -> AudioModality:
        """16 mel bins x 16 frames, a 2-layer SpeechDiT of width 32, 16-D random text embeddings; no files."""
        return cls(latent=MelLatent(n_fft=128, hop_length=64, n_mels=16, frames=16),
                   network={"width": 32, "layers": 2, "heads": 2, "kv_heads": 1, "cross_dim": 32, "time_dim": 32},
                   text_encoder=None, text_dim=16)

    def example_batch(self, n: int, generator: torch.Generator) -> Batch:
        """Tones of random pitch and onset (latent = their real log-mel), random unit text embeddings."""
        rate, samples = self.latent.sample_rate, self.latent.samples
        grid = torch.arange(samples) / rate
        freq = 200 + 1800 * torch.rand(n, 1, generator=generator)
        onset = 0.3 * torch.rand(n, 1, generator=generator) * samples / rate
        wave = 0.5 * torch.sin(2 * torch.pi * freq * grid) * (grid > onset)
        emb = torch.randn(n, 4, self.text_dim, generator=generator)
        pooled = torch.nn.functional.normalize(emb.mean(1), dim=-1)
        label = torch.randint(0, 4, (n,), generator=generator)
        return Batch(self.encode(wave), {"emb": emb, "pooled": pooled, "labels": {"word": label}})
