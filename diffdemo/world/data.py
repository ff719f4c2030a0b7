"""Real images for training, fetched from Debian packages: ``python -m diffdemo.world.data fetch [--out DIR]``
(``list`` counts what is stored; ``pack --archive F.tar`` writes a ≤64 MiB copy to carry to a GPU machine).

The shape world alone teaches the models nothing about photographs, so training mixes it with freely licensed
pictures that Debian ships as desktop wallpapers. ``fetch`` runs ``apt-get download`` and ``dpkg-deb -x`` for
each package in :data:`PACKAGES` (no model hub, no web scraping), keeps the files listed here, stores them as
JPEGs of at most :data:`MAX_SIDE` pixels a side under ``DIR/images/<package>/`` with each package's
``copyright`` file under ``DIR/licences/``, and writes ``DIR/manifest.json``. Nothing fetched is committed.

Splits: ``photo`` (real photographs, for training), ``held_out`` (real photographs never trained or tuned on,
for measuring) and ``art`` (paintings, renders and abstract wallpapers, mixed in for variety). Images that ship
inside Python packages (scikit-image's ``skimage.data`` photos) are never trained on either: they are the public
evaluation set (:func:`public_photos`), standing in for the photo a visitor uploads.

Emoji: ``fetch`` also downloads ``fonts-noto-color-emoji`` (:data:`EMOJI_PACKAGE`), keeps the font under
``DIR/fonts/`` and renders each emoji subject's glyph once to ``DIR/emoji/<codepoints>.png``
(:mod:`diffdemo.world.emoji.glyphs`); training and the emoji checker read those tiles.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

MAX_SIDE = 1600  # stored size; random crops are taken at several scales below this


@dataclass(frozen=True)
class Package:
    """A Debian package and the files kept from it (paths relative to its root), by split."""

    licence: str
    photo: tuple[str, ...] = ()
    held_out: tuple[str, ...] = ()
    art: tuple[str, ...] = ()


_LOMIRI = "usr/share/backgrounds/"
_MATE = "usr/share/backgrounds/mate/"
_GNOME = "usr/share/backgrounds/gnome/"
_UKUI = "usr/share/backgrounds/"


def _plasma(*names: str, file: str = "1280x1024.jpg") -> tuple[str, ...]:
    return tuple(f"usr/share/wallpapers/{name}/contents/images/{file}" for name in names)


PACKAGES: dict[str, Package] = {
    "lomiri-wallpapers-16.04": Package(
        licence="CC-BY-4.0 / CC-BY-SA-4.0 (per file, see its copyright file)",
        photo=tuple(_LOMIRI + f for f in (
            "Bridge_by_Sander_Klootwijk.jpg", "Dragonfly_by_Bolly.jpg", "Picture_0B_by_freespace.jpg",
            "Picture_1A_by_freespace.jpg", "aitzgorri_by_Aitzol_Berasategi.jpg", "analogpattern_by_Peter_Nerlich.jpg",
            "free_by_Peter_Nerlich.jpg", "greentock_by_Peter_Nerlich.jpg", "life_by_Aitzol_Berasategi.jpg",
            "picosdeeuropa_by_Aitzol_Berasategi.jpg", "seeding_by_Clements_Engelhardt.jpg",
            "sunset_by_Aitzol_Berasategi.jpg")),
        held_out=(_LOMIRI + "friends_by_Aitzol_Berasategi.jpg", _LOMIRI + "Wine_by_Jakkub_Mede.jpg"),
        art=(_LOMIRI + "umang_by_Abhishek_Mudgal.jpg",)),
    "lomiri-wallpapers-20.04": Package(
        licence="CC-BY-SA-4.0 (per file, see its copyright file)",
        held_out=(_LOMIRI + "Kleiber_by_Lukas_Baubkus.jpg",),
        art=tuple(_LOMIRI + f for f in ("Fossa_by_Jasper_Roks.jpg", "Infinite-Sea_by_Aury88.jpg",
                                        "Painting-Colors_by__herobrine7gamer.jpg"))),
    "mate-backgrounds": Package(
        licence="GPL-2+",
        photo=tuple(_MATE + "nature/" + f for f in (
            "Aqua.jpg", "Blinds.jpg", "Dune.jpg", "FreshFlower.jpg", "Garden.jpg", "GreenMeadow.jpg", "RainDrops.jpg",
            "Storm.jpg", "TwoWings.jpg", "Wood.jpg", "YellowFlower.jpg")),
        held_out=(_MATE + "nature/LadyBird.jpg",),
        art=(_MATE + "abstract/Elephants.jpg", _MATE + "abstract/Flow.png", _MATE + "abstract/Gulp.png",
             _MATE + "desktop/Float-into-MATE.png", _MATE + "desktop/MATE-Stripes-Light.png",
             _MATE + "desktop/Ubuntu-Mate-Cold-no-logo.png")),
    "plasma-workspace-wallpapers": Package(
        licence="GPL-2+",
        photo=_plasma("BytheWater", "ColdRipple", "DarkestHour", "FallenLeaf", "Grey", "Kite", "OneStandsOut",
                      "Path", "summer_1am") + _plasma("Volna", file="5120x2880.jpg"),
        held_out=_plasma("EveningGlow"),
        art=_plasma("Autumn") + _plasma("ColorfulCups", file="2560x1600.jpg")
        + _plasma("Altai", "Kay", "MilkyWay", "Patak", file="5120x2880.png")
        + _plasma("Canopee", "Cascade", "Cluster", "Kokkini", "Opal", file="3840x2160.png")
        + _plasma("Flow", "Honeywave", "SafeLanding", "Shell", file="5120x2880.jpg")
        + _plasma("PastelHills") + _plasma("FlyingKonqui", file="1280x1024.png")),
    "gnome-backgrounds": Package(
        licence="CC-BY-SA-3.0 (see its copyright file)",
        art=tuple(_GNOME + f for f in ("adwaita-l.webp", "grid-l.webp", "licorice-l.webp", "pixels-l.webp",
                                       "symbolic-d.webp", "truchet-d.webp", "wood-l.webp"))),
    "ukui-wallpapers": Package(
        licence="CC-BY-SA-3.0",
        art=tuple(_UKUI + f for f in ("2004default.jpg", "calla.png", "city.png", "desert.png", "firstgeneration.jpg",
                                      "fluent-color.png", "goldfish.png", "rhythm.jpg", "rollpaper.png", "string.jpg",
                                      "the-mouse.jpg"))),
}
SPLITS = ("photo", "held_out", "art")
EMOJI_PACKAGE = "fonts-noto-color-emoji"
EMOJI_LICENCE = "Apache-2.0 (images), OFL-1.1 (font); see its copyright file"
EMOJI_FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TILES = "emoji"  # DIR/emoji/<codepoints>.png, one glyph tile per subject


def default_dir() -> Path:
    """``$DIFFDEMO_DATA``, else ``~/.cache/diffdemo/data``."""
    return Path(os.environ.get("DIFFDEMO_DATA") or Path.home() / ".cache" / "diffdemo" / "data")


def fetch(out: Path | None = None, packages=None, emoji: bool = True) -> dict:
    """Downloads and extracts each package, keeps the listed files (resized) and licences; returns the manifest.
    With ``emoji``, also the emoji font and its glyph tiles (:func:`fetch_emoji`).

    Packages already stored are skipped, so running it again only fetches what is missing.
    """
    out = Path(out or default_dir())
    manifest_path = out / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"images": [], "packages": {}}
    for name in packages or PACKAGES:
        if name in manifest["packages"]:
            continue
        with tempfile.TemporaryDirectory() as work:
            root = _download_and_extract(name, Path(work))
            entries = _keep(name, PACKAGES[name], root, out)
            version = _deb_version(Path(work))
        manifest["images"] = [e for e in manifest["images"] if e["package"] != name] + entries
        manifest["packages"][name] = {"version": version, "licence": PACKAGES[name].licence,
                                      "copyright": f"licences/{name}.copyright"}
        out.mkdir(parents=True, exist_ok=True)
        manifest_path.write_text(json.dumps(manifest, indent=1))
        print(f"[data] {name} {version}: kept {len(entries)} images", flush=True)
    if emoji and "emoji" not in manifest:
        manifest["emoji"] = fetch_emoji(out)
        manifest_path.write_text(json.dumps(manifest, indent=1))
    return manifest


def fetch_emoji(out: Path) -> dict:
    """Downloads :data:`EMOJI_PACKAGE`, keeps its font and copyright file and renders the subjects' glyph tiles
    to ``out/emoji/``; returns the manifest entry."""
    from diffdemo.world.emoji.glyphs import render_tiles

    with tempfile.TemporaryDirectory() as work:
        root, version = debian_package(EMOJI_PACKAGE, Path(work))
        (out / "licences").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(next(root.glob("usr/share/doc/*/copyright")), out / "licences" / f"{EMOJI_PACKAGE}.copyright")
        font = out / "fonts" / Path(EMOJI_FONT).name
        font.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / EMOJI_FONT, font)
    tiles = render_tiles(font, out / EMOJI_TILES)
    print(f"[data] {EMOJI_PACKAGE} {version}: rendered {tiles} emoji glyph tiles", flush=True)
    return {"package": EMOJI_PACKAGE, "version": version, "licence": EMOJI_LICENCE, "tiles": tiles,
            "font": str(font.relative_to(out)), "copyright": f"licences/{EMOJI_PACKAGE}.copyright"}


def debian_package(name: str, work: Path) -> tuple[Path, str]:
    """Downloads the Debian package ``name`` into ``work`` and extracts it: (its root folder, its version)."""
    return _download_and_extract(name, work), _deb_version(work)


def _download_and_extract(name: str, work: Path) -> Path:
    subprocess.run(["apt-get", "download", name], cwd=work, check=True, capture_output=True)
    deb = next(work.glob("*.deb"))
    root = work / "root"
    subprocess.run(["dpkg-deb", "-x", str(deb), str(root)], check=True)
    return root


def _deb_version(work: Path) -> str:
    deb = next(work.glob("*.deb"))
    return deb.name.split("_")[1].replace("%3a", ":")


def _keep(name: str, package: Package, root: Path, out: Path) -> list[dict]:
    (out / "licences").mkdir(parents=True, exist_ok=True)
    copyright_file = next(root.glob("usr/share/doc/*/copyright"))
    shutil.copyfile(copyright_file, out / "licences" / f"{name}.copyright")
    entries = []
    for split in SPLITS:
        for relative in getattr(package, split):
            source = root / relative
            target = out / "images" / name / (_stem(relative) + ".jpg")
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(source) as image:
                image = image.convert("RGB")
                image.thumbnail((MAX_SIDE, MAX_SIDE), Image.Resampling.LANCZOS)
                image.save(target, quality=93)
                size = image.size
            entries.append({"file": str(target.relative_to(out)), "package": name, "source": relative,
                            "split": split, "size": list(size)})
    return entries


def _stem(relative: str) -> str:
    """A unique file stem: plasma keeps every picture in ``<Name>/contents/images/<size>``."""
    parts = Path(relative).parts
    return parts[-4] if "contents" in parts else Path(relative).stem


def load_split(split: str, root: Path | None = None) -> list[np.ndarray]:
    """The stored images of one split as ``H×W×3`` uint8 arrays (run :func:`fetch` first)."""
    root = Path(root or default_dir())
    manifest_path = root / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"No fetched images in {root}; run: python -m diffdemo.world.data fetch --out {root}")
    entries = [e for e in json.loads(manifest_path.read_text())["images"] if e["split"] == split]
    return [np.asarray(Image.open(root / e["file"]).convert("RGB")) for e in entries]


class CropPool:
    """Random square crops of a list of images at several scales, with flips, resized to ``size``.

    A crop's side is log-uniform between ``size`` (the picture's own detail) and the image's shorter side (the
    whole scene shrunk, as an uploaded photo usually is), so a few dozen large photographs give millions of
    distinct training images. Seeded by ``rng``.
    """

    def __init__(self, images: list[np.ndarray], rng: random.Random):
        if not images:
            raise ValueError("CropPool needs at least one image")
        self.images, self.rng = images, rng

    def crop(self, size: int) -> np.ndarray:
        image = self.rng.choice(self.images)
        height, width = image.shape[:2]
        side = min(height, width)
        crop = int(round(size * (side / size) ** self.rng.random())) if side > size else side
        top, left = self.rng.randint(0, height - crop), self.rng.randint(0, width - crop)
        patch = Image.fromarray(image[top: top + crop, left: left + crop])
        if crop != size:
            patch = patch.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=2.0)
        if self.rng.random() < 0.5:
            patch = patch.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        return np.asarray(patch)

    def batch(self, n: int, size: int) -> np.ndarray:
        """``n×size×size×3`` uint8."""
        return np.stack([self.crop(size) for _ in range(n)])


PUBLIC_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket")


def public_photos(size: int = 256) -> dict[str, np.ndarray]:
    """scikit-image's bundled colour photographs, centre-cropped to ``size``² (the public evaluation set)."""
    import skimage.data

    return {name: centre_crop(getattr(skimage.data, name)(), size) for name in PUBLIC_PHOTOS}


def held_out_photos(size: int = 256, root: Path | None = None, short_side: int = 512) -> dict[str, np.ndarray]:
    """Centre crops of the held-out Debian photographs, each first shrunk to a ``short_side`` shorter side (about
    the scale of a photo a visitor uploads)."""
    root = Path(root or default_dir())
    entries = [e for e in json.loads((root / "manifest.json").read_text())["images"] if e["split"] == "held_out"]
    crops = {}
    for entry in entries:
        image = Image.open(root / entry["file"]).convert("RGB")
        scale = short_side / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), Image.Resampling.LANCZOS)
        crops[Path(entry["file"]).stem] = centre_crop(np.asarray(image), size)
    return crops


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """The central ``size``² of an ``H×W×3`` array (shrunk first if a side is shorter than ``size``)."""
    height, width = image.shape[:2]
    if min(height, width) < size:
        scale = size / min(height, width)
        image = np.asarray(Image.fromarray(image).resize((round(width * scale), round(height * scale)),
                                                         Image.Resampling.LANCZOS))
        height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return np.ascontiguousarray(image[top: top + size, left: left + size, :3])


def pack(root: Path | None, archive: Path, max_side: int = MAX_SIDE, limit_mib: int = 64) -> dict:
    """Writes the fetched images, shrunk to ``max_side`` and re-encoded, with the manifest and licences, into one
    ``.tar`` small enough to carry to another machine (a GPU box with no network); unpack it and point
    ``DIFFDEMO_DATA`` (or ``--data-dir``) at the folder."""
    import io
    import tarfile

    root = Path(root or default_dir())
    manifest = json.loads((root / "manifest.json").read_text())
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "w") as tar:
        for entry in manifest["images"]:
            image = Image.open(root / entry["file"])
            image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            info = tarfile.TarInfo(entry["file"])
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
            entry["size"] = list(image.size)
        for name in ["licences/" + p.name for p in sorted((root / "licences").iterdir())]:
            tar.add(root / name, arcname=name)
        for tile in sorted((root / EMOJI_TILES).glob("*.png")):  # the tiles, not the 11 MB font
            tar.add(tile, arcname=f"{EMOJI_TILES}/{tile.name}")
        data = json.dumps(manifest, indent=1).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    size = archive.stat().st_size
    if size > limit_mib * 2**20:
        raise ValueError(f"{archive} is {size / 2**20:.1f} MiB, over {limit_mib} MiB; pack with a smaller max_side")
    return {"archive": str(archive), "mib": round(size / 2**20, 1), "images": len(manifest["images"])}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("fetch", "list", "pack"))
    parser.add_argument("--out", type=Path, default=None, help=f"cache folder (default {default_dir()})")
    parser.add_argument("--archive", type=Path, default=Path("build/data.tar"), help="pack: the .tar to write")
    args = parser.parse_args(argv)
    if args.command == "pack":
        print(json.dumps(pack(args.out, args.archive)))
        return
    if args.command == "fetch":
        manifest = fetch(args.out)
    else:
        manifest = json.loads((Path(args.out or default_dir()) / "manifest.json").read_text())
    counts = {split: sum(e["split"] == split for e in manifest["images"]) for split in SPLITS}
    counts["emoji_tiles"] = manifest.get("emoji", {}).get("tiles", 0)
    print(json.dumps({"folder": str(args.out or default_dir()), **counts}))


if __name__ == "__main__":
    main()
