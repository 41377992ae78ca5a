"""A word-table "text encoder" for small conditional latent models.

A prompt names at most one word per *slot* (for the shapes bed: a type slot
``circle | square | triangle`` and a size slot ``small | medium | large``). Its embedding is one
token per slot, ``(num_slots, width)``:

    e(prompt)[k] = E[word of slot k]   if the prompt names a word of slot k
                 = 0                   otherwise (the null token)

so ``""`` (nothing named) is the all-zero null embedding that a model trained with condition
dropout uses as its unconditional input, as classifier-free guidance needs (Ho & Salimans 2022).
The table ``E`` is trained together with the denoiser and ships beside it in a Stable-Diffusion
layout folder as ``prompt_embeddings.safetensors`` (tensor ``embeddings``, ``(V, width)``) and
``prompt_embeddings.json`` (``{"slots": [[word, ...], ...], "width": D}``; the rows of ``E`` are
the words in slot order).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["PromptTable", "PROMPT_TABLE_WEIGHTS", "PROMPT_TABLE_CONFIG"]

PROMPT_TABLE_WEIGHTS = "prompt_embeddings.safetensors"
PROMPT_TABLE_CONFIG = "prompt_embeddings.json"


class PromptTable(nn.Module):
    """One learned vector per word, one token per slot, zeros for an unnamed slot (see module doc).

    Args:
        slots: the words of each slot, e.g. ``[["circle", "square", "triangle"], ["small", "medium", "large"]]``.
        width: the embedding width (the denoiser's ``cross_attention_dim``).
        init_std: standard deviation of the random initial table.
    """

    def __init__(self, slots: Sequence[Sequence[str]], width: int, init_std: float = 1.0) -> None:
        super().__init__()
        slots = [list(s) for s in slots]
        words = [w for s in slots for w in s]
        if not slots or any(not s for s in slots):
            raise ValueError(f"slots: expected non-empty lists of words, got {slots!r}")
        if len(set(words)) != len(words) or any((not isinstance(w, str)) or (not w) or (" " in w) for w in words):
            raise ValueError(f"slots: expected distinct single words, got {slots!r}")
        if width < 1:
            raise ValueError(f"width: expected a positive integer, got {width}")
        self.slots = slots
        self.width = int(width)
        self._word_index = {w: i for i, w in enumerate(words)}
        self._word_slot = {w: k for k, s in enumerate(slots) for w in s}
        self._slot_offset = [sum(len(s) for s in slots[:k]) for k in range(len(slots))]
        self.embeddings = nn.Parameter(torch.randn(len(words), self.width) * init_std)

    @property
    def num_slots(self) -> int:
        return len(self.slots)

    def null(self, batch: int) -> torch.Tensor:
        """The unconditional embedding ``(batch, num_slots, width)``: all zeros."""
        return self.embeddings.new_zeros(batch, self.num_slots, self.width)

    def encode_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """``(B, num_slots)`` integer labels (index within each slot; ``-1`` = unnamed) -> ``(B, num_slots, width)``."""
        labels = torch.as_tensor(labels)
        if labels.dim() != 2 or labels.shape[1] != self.num_slots or labels.is_floating_point():
            raise ValueError(f"labels: expected an integer tensor (B, {self.num_slots}), got {tuple(labels.shape)} {labels.dtype}")
        sizes = torch.tensor([len(s) for s in self.slots], device=labels.device)
        if ((labels < -1) | (labels >= sizes[None])).any():
            raise ValueError(f"labels: expected values in [-1, slot size) for slot sizes {sizes.tolist()}")
        device = self.embeddings.device  # the labels (from prompts: on the CPU) index the table where it is
        rows = (labels.clamp(min=0) + torch.tensor(self._slot_offset, device=labels.device)[None]).to(device)
        out = self.embeddings[rows]  # (B, S, D)
        return out * (labels >= 0).unsqueeze(-1).to(device=device, dtype=out.dtype)

    def labels_of(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """``(B, num_slots)`` slot labels of prompts such as ``"circle large"`` (``-1`` for an unnamed slot)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        out = torch.full((len(prompts), self.num_slots), -1, dtype=torch.long)
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise ValueError(f"prompts: expected strings, got {type(p).__name__} at position {i}")
            for w in p.lower().replace(",", " ").split():
                if w not in self._word_index:
                    raise ValueError(f"prompts: unknown word {w!r} in {p!r}; known words: {', '.join(self._word_index)}")
                k = self._word_slot[w]
                if out[i, k] >= 0:
                    raise ValueError(f"prompts: {p!r} names two words of the slot {self.slots[k]}")
                out[i, k] = self._word_index[w] - self._slot_offset[k]
        return out

    def forward(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """Embeddings ``(B, num_slots, width)`` of prompts (see :meth:`labels_of`)."""
        return self.encode_labels(self.labels_of(prompts))

    def save(self, folder: str | os.PathLike, half: bool = False) -> None:
        """Write ``prompt_embeddings.safetensors`` and ``prompt_embeddings.json`` into ``folder``."""
        from safetensors.torch import save_file

        from .checkpoint import write_json_atomic

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        e = self.embeddings.detach().contiguous().clone()
        tmp = folder / f".{PROMPT_TABLE_WEIGHTS}.tmp"
        save_file({"embeddings": e.half() if half else e}, str(tmp))
        os.replace(tmp, folder / PROMPT_TABLE_WEIGHTS)
        write_json_atomic(folder / PROMPT_TABLE_CONFIG, {"slots": self.slots, "width": self.width, "null": "zeros"})

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "PromptTable":
        """Read a table written by :meth:`save` (float32, gradients off); :class:`CheckpointError` if absent or corrupt."""
        from .checkpoint import CheckpointError, _read_weights

        folder = Path(folder)
        cfg_path = folder / PROMPT_TABLE_CONFIG
        if not cfg_path.is_file():
            raise CheckpointError(f"checkpoint {str(folder)!r}: missing file {PROMPT_TABLE_CONFIG}")
        try:
            cfg = json.loads(cfg_path.read_text())
            table = cls(cfg["slots"], int(cfg["width"]))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"checkpoint {str(folder)!r}: {PROMPT_TABLE_CONFIG} is not a prompt table config ({e})") from e
        e = _read_weights(folder / PROMPT_TABLE_WEIGHTS).get("embeddings")
        if e is None or tuple(e.shape) != tuple(table.embeddings.shape):
            raise CheckpointError(f"checkpoint {str(folder)!r}: {PROMPT_TABLE_WEIGHTS} has no 'embeddings' of shape {tuple(table.embeddings.shape)}")
        with torch.no_grad():
            table.embeddings.copy_(e.float())
        return table.eval().requires_grad_(False)
