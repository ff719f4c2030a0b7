"""World scenes with emoji among the shapes, for the training streams (``TrainConfig.emoji_share``)."""
from __future__ import annotations

import random

import torch

from diffdemo.world.emoji.glyphs import Glyphs
from diffdemo.world.emoji.render import GlyphTensors, render_emoji_scenes
from diffdemo.world.emoji.scene import sample_emoji_scene
from diffdemo.world.render import render_scenes
from diffdemo.world.scene import sample_scene


class EmojiMix:
    """Draws training scenes (never held-out ones): each is an emoji scene with probability ``share``, else a
    shape scene; emoji subjects are those ``glyphs`` has tiles for."""

    def __init__(self, share: float, glyphs: Glyphs, device):
        if not 0 < share <= 1:
            raise ValueError(f"emoji_share must be in (0, 1]; got {share}")
        self.share, self.tensors, self.names = share, GlyphTensors(glyphs, device), glyphs.names

    def batch(self, rng: random.Random, n: int, size: int) -> tuple[list, torch.Tensor]:
        """(scenes, ``n×3×size×size`` images in [-1, 1]); scenes are ``Scene`` or ``EmojiScene`` objects."""
        scenes = [sample_emoji_scene(rng, names=self.names) if rng.random() < self.share else sample_scene(rng)
                  for _ in range(n)]
        emoji = [i for i, s in enumerate(scenes) if hasattr(s, "subject")]
        shapes = [i for i, s in enumerate(scenes) if not hasattr(s, "subject")]
        images = torch.empty(n, 3, size, size, device=self.tensors.device)
        if shapes:
            images[shapes] = render_scenes([scenes[i] for i in shapes], size, self.tensors.device, rng=rng)
        if emoji:
            images[emoji] = render_emoji_scenes([scenes[i] for i in emoji], self.tensors, size, rng=rng)
        return scenes, images
