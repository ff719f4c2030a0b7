"""Subject adherence on emoji captions, for a model whose vocabulary lists the emoji subjects.

``python -m diffdemo.world.evaluate DIR`` calls :func:`evaluate_emoji` when the model knows them: fully specified
captions of seen and of held-out combinations go through the app's own text-to-image task, and the emoji checker
reads subject, background, size and position back (the glyph tiles must be fetched:
``python -m diffdemo.world.data fetch``).
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from diffdemo.world.emoji.checker import ATTRIBUTES, EmojiChecker, score
from diffdemo.world.emoji.scene import sample_emoji_scene
from diffdemo.world.emoji.subjects import by_name


def knows_emoji(models) -> bool:
    """True when the model's vocabulary file lists subjects beyond the shapes."""
    vocabulary = getattr(models, "vocabulary", None)
    return vocabulary is not None and any(family != "shapes" for family in vocabulary.subjects)


def emoji_adherence(models, checker: EmojiChecker, n: int, held_out: bool, seed: int, steps: int, guidance: float,
                    sampler: str):
    """(per-attribute accuracy with per-family subject accuracy and the commonest confusions, images, scenes)."""
    from diffdemo.tasks import TextToImageRequest, text_to_image

    rng = random.Random(seed + (101 if held_out else 100))
    scenes = [sample_emoji_scene(rng, held_out=held_out, mention_prob=1.0, names=checker.names) for _ in range(n)]
    images = [text_to_image(models, TextToImageRequest(prompt=scene.caption, sampler=sampler, steps=steps,
                                                       guidance_scale=guidance, seed=seed * 10_000 + i)).images[0]
              for i, scene in enumerate(scenes)]
    judgements = [checker.judge(image) for image in images]
    read = [judgement.subject for judgement in judgements]
    scores = [score(scene, judgement) for scene, judgement in zip(scenes, judgements)]
    total = Counter(attribute for found in scores for attribute in found)
    ok = Counter(attribute for found in scores for attribute, correct in found.items() if correct)
    families = Counter((by_name()[scene.subject].family, subject == scene.subject)
                       for scene, subject in zip(scenes, read))
    confusions = Counter(f"{scene.subject} -> {subject}" for scene, subject in zip(scenes, read)
                         if subject != scene.subject)
    by_family = {family: round(families[family, True] / (families[family, True] + families[family, False]), 3)
                 for family in sorted({family for family, _ in families})}
    accuracy = {a: round(ok[a] / total[a], 3) for a in ATTRIBUTES if total[a]}
    return {**accuracy, "subject_by_family": by_family, "subject_errors": dict(confusions.most_common(20))}, \
        images, scenes


def evaluate_emoji(models, samples: int, seed: int, steps: int, guidance: float, sampler: str,
                   data_dir: str | None = None, grid: Path | None = None) -> dict:
    """Seen and held-out emoji adherence (``samples`` captions each); with ``grid``, a sample grid PNG of seen
    ones."""
    from diffdemo.world.emoji.glyphs import load_glyphs
    from diffdemo.world.evaluate import save_grid

    checker = EmojiChecker(load_glyphs(data_dir))
    results = {}
    for name, held_out in (("seen", False), ("held_out", True)):
        results[name], images, scenes = emoji_adherence(models, checker, samples, held_out, seed, steps, guidance,
                                                        sampler)
        print("emoji", name, results[name], flush=True)
        if grid and name == "seen":
            save_grid(images[:32], grid)
            results["grid_captions"] = [s.caption for s in scenes[:32]]
    return results
