"""Prompt encoding: text -> CLIP text-encoder hidden states for the U-Net's cross-attention."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncodedPrompt:
    """``cond``/``uncond``: ``B×L×D`` hidden states; ``truncated`` lists words dropped past the token limit."""

    cond: torch.Tensor
    uncond: torch.Tensor
    truncated: str = ""


def _encode(models, texts: list[str]) -> torch.Tensor:
    tokenizer = models.tokenizer
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    with torch.no_grad():
        return models.text_encoder(ids.to(models.device))[0].to(models.dtype)


def encode_prompt(models, prompt: str, negative_prompt: str = "", batch: int = 1) -> EncodedPrompt:
    """Encodes ``prompt`` and ``negative_prompt`` (the unconditional branch of guidance), repeated ``batch`` times."""
    tokenizer = models.tokenizer
    tokens = tokenizer(prompt, truncation=False).input_ids
    limit = tokenizer.model_max_length
    truncated = tokenizer.decode(tokens[limit - 1:-1]) if len(tokens) > limit else ""
    cond, uncond = _encode(models, [prompt, negative_prompt]).chunk(2)
    return EncodedPrompt(cond.repeat(batch, 1, 1), uncond.repeat(batch, 1, 1), truncated.strip())
