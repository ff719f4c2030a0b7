"""What a local diffusers folder holds, read from its files before anything is loaded: the family (a second text
encoder means SDXL), the weight variant (``*.fp16.safetensors``) and the layouts diffdemo refuses, each with a one
sentence reason that names what was found."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffdemo.engine.loading import ModelLoadError

PARTS = ("unet", "vae", "text_encoder")
WEIGHT_SUFFIXES = (".safetensors", ".bin")


@dataclass(frozen=True)
class FolderLayout:
    sdxl: bool  # two text encoders and tokenizers (text_encoder_2/, tokenizer_2/)
    variant: str | None  # the weight variant to load ("fp16"), None for the plain files
    force_zeros_for_empty_prompt: bool  # SDXL: an empty negative prompt is all zeros, not the encoded ""


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def inspect_folder(folder: Path, variant: str | None = None) -> FolderLayout:
    """Checks a diffusers folder's layout; raises ModelLoadError saying what it found when diffdemo cannot run it."""
    index = read_json(folder / "model_index.json")
    pipeline = index.get("_class_name", "a pipeline")
    if "transformer" in index or (folder / "transformer").is_dir():
        raise ModelLoadError(f"The folder {folder} holds a transformer-based model ({pipeline}, e.g. SD3 or FLUX), "
                             f"which diffdemo does not run; it runs U-Net models: SD 1.x, SD 2.x and SDXL.")
    vae_class = read_json(folder / "vae" / "config.json").get("_class_name")
    if vae_class == "AutoencoderTiny":
        raise ModelLoadError(f"The folder {folder} has an AutoencoderTiny (TAESD) as vae/; put the model's full "
                             f"AutoencoderKL there (or pass one with --vae) and give the tiny one with --tiny-vae.")
    missing = [part for part in ("unet", "vae", "tokenizer", "text_encoder") if not (folder / part).is_dir()]
    if missing:
        found = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())[:8]
        raise ModelLoadError(f"The model folder {folder} has no {', '.join(p + '/' for p in missing)} subfolder, so "
                             f"it is not a complete Stable Diffusion diffusers folder (found: "
                             f"{', '.join(found) or 'nothing'}).")
    sdxl = (folder / "text_encoder_2").is_dir()
    return FolderLayout(sdxl=sdxl, variant=_variant(folder, variant),
                        force_zeros_for_empty_prompt=sdxl and bool(index.get("force_zeros_for_empty_prompt", True)))


def weight_variants(part: Path) -> dict[str, str | None]:
    """Weight file name -> its variant (None for plain files): ``model.safetensors`` -> None,
    ``model.fp16.safetensors`` -> "fp16", ``…safetensors.index.fp16.json`` -> "fp16" (sharded)."""
    found = {}
    for name in sorted(p.name for p in part.iterdir()):
        pieces = name.split(".")
        if name.endswith(WEIGHT_SUFFIXES):
            found[name] = pieces[1] if len(pieces) == 3 else None
        elif ".index." in name and name.endswith(".json"):
            found[name] = pieces[3] if len(pieces) == 5 else None
    return found


def _variant(folder: Path, asked: str | None) -> str | None:
    """``asked`` if every part has weights of that variant; else None when every part has plain weights; else the
    one variant every part has (a folder with only ``*.fp16.safetensors`` loads as fp16 without being told)."""
    files = {part: weight_variants(folder / part) for part in PARTS if (folder / part).is_dir()}
    if asked:
        lacking = [part for part, names in files.items() if asked not in names.values()]
        if lacking:
            raise ModelLoadError(f"--variant {asked}: {folder}/{lacking[0]} has no *.{asked}.safetensors weights "
                                 f"(found: {', '.join(files[lacking[0]]) or 'no weight files'}).")
        return asked
    if all(None in names.values() for names in files.values()):
        return None
    shared = set.intersection(*[set(names.values()) - {None} for names in files.values()])
    if len(shared) == 1:
        return shared.pop()
    part = next(part for part, names in files.items() if None not in names.values())
    raise ModelLoadError(f"{folder}/{part} has no plain weight file (found: {', '.join(files[part]) or 'none'}); "
                         f"pass --variant NAME to load files named *.NAME.safetensors.")
