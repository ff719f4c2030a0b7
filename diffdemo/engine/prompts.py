"""Prompt encoding: text -> CLIP text-encoder hidden states for the U-Net's cross-attention.

SD 1.x/2.x: the text encoder's last hidden state, ``B×77×D``. SDXL: the penultimate hidden states of both encoders
side by side (``B×77×(768+1280)``) plus the second encoder's pooled projection (``B×1280``), which the U-Net takes
with the size/crop ids (:meth:`EncodedPrompt.added_conditions`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class EncodedPrompt:
    """``cond``/``uncond``: ``B×L×D`` hidden states; ``truncated`` lists words dropped past the token limit;
    ``pooled``/``pooled_uncond``: SDXL's pooled text embeddings ``B×P`` (None for SD 1.x/2.x)."""

    cond: torch.Tensor
    uncond: torch.Tensor
    truncated: str = ""
    pooled: torch.Tensor | None = None
    pooled_uncond: torch.Tensor | None = None
    loras: tuple = ()  # the LoRAs on while encoding, (UsedLora, ...) (engine/lora.py)

    def added_conditions(self, height: int, width: int) -> tuple[dict, dict] | None:
        """SDXL's extra U-Net inputs for an image of ``height``×``width`` pixels, (cond, uncond): the pooled text
        and the micro-conditioning ids (original size, crop top-left, target size) = (H, W, 0, 0, H, W), what
        diffusers' SDXL pipeline passes by default. None for models without them."""
        if self.pooled is None:
            return None
        ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=self.pooled.dtype, device=self.pooled.device)
        ids = ids.expand(self.pooled.shape[0], -1)
        return {"text_embeds": self.pooled, "time_ids": ids}, {"text_embeds": self.pooled_uncond, "time_ids": ids}


def _hidden_states(tokenizer, encoder, texts: list[str], device, penultimate: bool):
    ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt").input_ids
    output = encoder(ids.to(device), output_hidden_states=penultimate)
    return output, output.hidden_states[-2] if penultimate else output[0]


def _encode(models, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``B×L×D`` hidden states (and SDXL's ``B×P`` pooled embeddings, else None) in the model's dtype."""
    with torch.no_grad():
        if getattr(models, "text_encoder_2", None) is None:
            _, hidden = _hidden_states(models.tokenizer, models.text_encoder, texts, models.device, False)
            return hidden.to(models.dtype), None
        _, first = _hidden_states(models.tokenizer, models.text_encoder, texts, models.device, True)
        output, second = _hidden_states(models.tokenizer_2, models.text_encoder_2, texts, models.device, True)
        return torch.cat([first, second], dim=-1).to(models.dtype), output.text_embeds.to(models.dtype)


def apply_loras(models, prompt: str) -> tuple[str, tuple]:
    """Strips ``<lora:NAME:WEIGHT>`` tags from ``prompt`` and sets the model's LoRA adapters for this request (the
    ``--lora`` ones plus those named); returns the plain prompt and the LoRAs in use. Raises LoraError."""
    from diffdemo.engine.lora import LoraError, split_prompt

    text, wanted = split_prompt(prompt)
    library = models.extras.get("loras")
    if library is None:
        if wanted:
            raise LoraError(f"The prompt names the LoRA '{next(iter(wanted))}', but this app has no LoRAs (start it "
                            f"with --lora-dir FOLDER or --lora FILE).")
        return text, ()
    return text, tuple(library.activate(wanted))


def encode_prompt(models, prompt: str, negative_prompt: str = "", batch: int = 1) -> EncodedPrompt:
    """Encodes ``prompt`` and ``negative_prompt`` (the unconditional branch of guidance), repeated ``batch`` times.
    SDXL models that ask for it (``force_zeros_for_empty_prompt``) get zeros for an empty negative prompt.
    LoRA tags in the prompt switch those LoRAs on for what follows (until the next prompt is encoded)."""
    from diffdemo.engine.lora import split_prompt

    prompt, loras = apply_loras(models, prompt)
    negative_prompt = split_prompt(negative_prompt)[0]
    tokenizer = models.tokenizer
    tokens = tokenizer(prompt, truncation=False).input_ids
    limit = tokenizer.model_max_length
    truncated = tokenizer.decode(tokens[limit - 1:-1]) if len(tokens) > limit else ""
    hidden, pooled = _encode(models, [prompt, negative_prompt])
    if getattr(models, "force_zeros_for_empty_prompt", False) and not negative_prompt:
        hidden[1:], pooled[1:] = 0, 0
    cond, uncond = hidden.chunk(2)
    pooled_cond, pooled_uncond = pooled.chunk(2) if pooled is not None else (None, None)
    pooled = (pooled_cond.repeat(batch, 1), pooled_uncond.repeat(batch, 1)) if pooled is not None else (None, None)
    return EncodedPrompt(cond.repeat(batch, 1, 1), uncond.repeat(batch, 1, 1), truncated.strip(), *pooled, loras)
