"""Names the emoji subject in an image, with its background, size and position: the emoji world's judge.

``python -m diffdemo.world.emoji.checker [--samples N]`` measures it on clean renders (it must read ≥98% of the
subjects right before it judges a model); ``--vae FOLDER`` reads them after an autoencoder's round trip instead.
How it reads an image (resized to 128²):

1. The background is the median colour of the border; the object is every pixel far from it, specks of a few
   pixels aside.
2. Each candidate glyph is composited on that background and cropped to the pixels that differ from it there (a
   white ghost on white shows only its eyes), so candidate and image are cut the same way.
3. Both crops are resized to :data:`TILE`² and compared as differences from the background; the nearest few
   candidates are then rendered at the size and place the crop implies and compared with the image itself, pixel
   for pixel. The best one names the subject; its placement gives size and position.
"""
from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from diffdemo.world.checker import _position_name as position_name
from diffdemo.world.checker import nearest_colour
from diffdemo.world.emoji.glyphs import Glyphs
from diffdemo.world.emoji.render import GlyphTensors, composite, glyph_box, resized_glyph
from diffdemo.world.emoji.scene import SIZE_THRESHOLD, EmojiScene
from diffdemo.world.scene import COLOURS

CHECK_SIZE = 128
TILE = 24  # side of the crops compared in the first, coarse round
SHORTLIST = 6  # candidates compared pixel for pixel in the second round
OBJECT_DISTANCE = 40.0  # RGB distance (0..255 units) from the background above which a pixel is the object
MIN_PIXELS = 12
SPECK = 8  # blobs of the object mask smaller than this many pixels are ignored
ATTRIBUTES = ("subject", "background", "size", "position")


@dataclass(frozen=True)
class EmojiJudgement:
    """What the checker sees; ``subject`` is None when nothing stands out from the background. ``error`` is the
    mean absolute pixel difference (0..1) between the image and the best candidate's render."""

    subject: str | None
    background: str
    size: str | None
    position: str | None
    error: float = 1.0


class EmojiChecker:
    """Judges images against the subjects of ``glyphs`` (all of them, or the few a test has)."""

    def __init__(self, glyphs: Glyphs):
        self.glyphs, self.names = glyphs, glyphs.names
        self.tensors = GlyphTensors(glyphs)
        # premultiplied RGB and alpha of each tile at full resolution, for the per-background crops
        self._tiles = [self.tensors[name].numpy() for name in self.names]
        self._by_background: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def judge(self, image) -> EmojiJudgement:
        """Judges a PIL image or ``H×W×3`` uint8 array."""
        pixels = _pixels(image)
        border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
        bg = np.median(border, axis=0)
        background = nearest_colour(bg * 255)
        mask = _without_specks(np.linalg.norm(pixels - bg, axis=-1) * 255 > OBJECT_DISTANCE)
        if mask.sum() < MIN_PIXELS:
            return EmojiJudgement(None, background, None, None)
        ys, xs = np.nonzero(mask)
        box = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
        shortlist = self._coarse(pixels, bg, box, background)
        name, placement, error = min((self._fine(pixels, bg, box, background, i) for i in shortlist),
                                     key=lambda found: found[2])
        cx, cy, radius = placement
        size = "large" if radius > SIZE_THRESHOLD else "small"
        return EmojiJudgement(name, background, size, position_name(cx, cy), round(error, 4))

    def _coarse(self, pixels, bg, box, background: str) -> list[int]:
        """Indices of the :data:`SHORTLIST` candidates whose visible crop looks most like the image's."""
        crops, aspects = self._candidates_on(background)
        top, left, bottom, right = box
        crop = _resize(pixels[top:bottom, left:right] - bg)
        aspect = np.log((right - left) / (bottom - top))
        distance = np.abs(crops - crop).mean(axis=(1, 2, 3)) + 0.05 * np.abs(aspects - aspect)
        return list(np.argsort(distance)[:SHORTLIST])

    def _candidates_on(self, background: str) -> tuple[np.ndarray, np.ndarray]:
        """Every candidate composited on ``background`` minus that background, cropped to where it differs from
        it and resized to TILE² (``N×TILE×TILE×3``), and the log aspect ratios of those crops."""
        if background not in self._by_background:
            bg = np.array(COLOURS[background], np.float32) / 255
            crops, aspects = [], []
            for tile in self._tiles:
                difference = (tile[:3] - tile[3:] * bg[:, None, None]).transpose(1, 2, 0)  # composite − bg
                top, left, bottom, right = _visible_box(difference)
                crops.append(_resize(difference[top:bottom, left:right]))
                aspects.append(np.log((right - left) / (bottom - top)))
            self._by_background[background] = np.stack(crops), np.array(aspects)
        return self._by_background[background]

    def _fine(self, pixels, bg, box, background: str, index: int):
        """(name, (cx, cy, radius), mean absolute error) of candidate ``index`` rendered where ``box`` says."""
        name = self.names[index]
        tile = self._tiles[index]
        difference = (tile[:3] - tile[3:] * (np.array(COLOURS[background], np.float32) / 255)[:, None, None])
        vtop, vleft, vbottom, vright = _visible_box(difference.transpose(1, 2, 0))
        top, left, bottom, right = box
        scale = ((bottom - top) + (right - left)) / ((vbottom - vtop) + (vright - vleft))  # image px per tile px
        h, w = tile.shape[1:]
        cx = (left - vleft * scale + w * scale / 2) / CHECK_SIZE
        cy = (top - vtop * scale + h * scale / 2) / CHECK_SIZE
        radius = scale * max(h, w) / 2 / CHECK_SIZE
        canvas = torch.from_numpy(np.ascontiguousarray(bg, np.float32))[:, None, None].repeat(1, CHECK_SIZE,
                                                                                               CHECK_SIZE)
        g_top, g_left, height, width = glyph_box((h, w), cx, cy, radius, CHECK_SIZE)
        composite(canvas, resized_glyph(self.tensors[name], height, width), g_top, g_left)
        error = float(np.abs(canvas.permute(1, 2, 0).numpy() - pixels).mean())
        return name, (cx, cy, radius), error


def _pixels(image) -> np.ndarray:
    """``128×128×3`` float32 in [0, 1]."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image))
    image = image.convert("RGB")
    if image.size != (CHECK_SIZE, CHECK_SIZE):
        image = image.resize((CHECK_SIZE, CHECK_SIZE), Image.BILINEAR)
    return np.asarray(image, np.float32) / 255


def _without_specks(mask: np.ndarray) -> np.ndarray:
    """``mask`` without blobs of fewer than :data:`SPECK` pixels: a decoder's stray pixels (often at the image's
    edge) would otherwise stretch the object's box across the image."""
    from skimage.measure import label

    blobs = label(mask, connectivity=2)
    keep = np.bincount(blobs.ravel()) >= SPECK
    keep[0] = False  # the background
    return keep[blobs]


def _visible_box(difference: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the pixels of an ``H×W×3`` difference from the background that stand out
    (the whole tile when none do)."""
    ys, xs = np.nonzero(np.linalg.norm(difference, axis=-1) * 255 > OBJECT_DISTANCE)
    if len(ys) == 0:
        return 0, 0, difference.shape[0], difference.shape[1]
    return ys.min(), xs.min(), ys.max() + 1, xs.max() + 1


def _resize(array: np.ndarray) -> np.ndarray:
    """``H×W×3`` -> ``TILE×TILE×3`` by area averaging."""
    tensor = torch.from_numpy(np.ascontiguousarray(array, np.float32)).permute(2, 0, 1)[None]
    return F.interpolate(tensor, size=(TILE, TILE), mode="bilinear", antialias=True)[0].permute(1, 2, 0).numpy()


def score(scene: EmojiScene, judgement: EmojiJudgement) -> dict[str, bool]:
    """Per-attribute correctness for what the caption asked for (the subject always)."""
    asked = {"subject", *scene.mentioned}
    return {a: getattr(judgement, a) == getattr(scene, a) for a in ATTRIBUTES if a in asked}


def clean_accuracy(checker: EmojiChecker, n: int, seed: int = 0, through=None) -> dict:
    """Reads ``n`` clean renders of fresh scenes (every subject of the checker, seen and held-out combinations)
    and returns per-attribute accuracy with the subject confusions.

    ``through`` (``B×3×H×W`` in [-1, 1] -> the same), e.g. an autoencoder's round trip, is applied to the renders
    before they are read; the result then adds the median PSNR of what it returned against the renders: how much
    of the emoji world a latent space keeps, whatever a U-Net later does in it."""
    from diffdemo.world.emoji.render import render_emoji_scenes
    from diffdemo.world.emoji.scene import sample_emoji_scene
    from diffdemo.world.render import to_pil

    rng = random.Random(seed)
    scenes = [sample_emoji_scene(rng, held_out=i % 4 == 0, mention_prob=1.0, names=checker.names)
              for i in range(n)]
    ok, asked, confusions, psnrs = dict.fromkeys(ATTRIBUTES, 0), dict.fromkeys(ATTRIBUTES, 0), {}, []
    for start in range(0, n, 64):
        chunk = scenes[start:start + 64]
        images = render_emoji_scenes(chunk, checker.tensors, CHECK_SIZE, rng=rng)
        if through is not None:
            clean, images = images, through(images).clamp(-1, 1)
            psnrs += (-10 * torch.log10(((images - clean) / 2).pow(2).flatten(1).mean(1))).tolist()
        for scene, image in zip(chunk, to_pil(images)):
            judgement = checker.judge(image)
            for attribute, correct in score(scene, judgement).items():
                ok[attribute] += correct
                asked[attribute] += 1
            if judgement.subject != scene.subject:
                key = f"{scene.subject} -> {judgement.subject}"
                confusions[key] = confusions.get(key, 0) + 1
    found = {**{a: round(ok[a] / asked[a], 4) for a in ATTRIBUTES if asked[a]}, "samples": n,
             "subjects": len(checker.names)}
    if psnrs:
        found["round_trip_psnr_db"] = round(float(np.median(psnrs)), 2)
    return {**found, "confusions": dict(sorted(confusions.items(), key=lambda kv: -kv[1]))}


def autoencoder_round_trip(folder: str):
    """The round trip (encode, posterior mean, decode) of the ``AutoencoderKL`` in ``folder``, for ``through``."""
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(folder, torch_dtype=torch.float32).eval()

    def through(images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat([vae.decode(vae.encode(c).latent_dist.mode()).sample for c in images.split(16)])

    return through


def main(argv=None) -> None:
    from diffdemo.world.emoji.glyphs import load_glyphs

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None, help="fetched data (default: diffdemo.world.data.default_dir())")
    parser.add_argument("--vae", default=None, help="read the renders after this autoencoder's round trip "
                        "(a diffusers AutoencoderKL folder, e.g. assets/model/vae)")
    args = parser.parse_args(argv)
    through = autoencoder_round_trip(args.vae) if args.vae else None
    print(json.dumps(clean_accuracy(EmojiChecker(load_glyphs(args.data_dir)), args.samples, args.seed, through),
                     indent=1))


if __name__ == "__main__":
    main()
