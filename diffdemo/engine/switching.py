"""Switching models while the app runs: a folder of models (``--models-dir``) listed by name, one model set loaded
at a time, the previous one freed before the next is loaded (two SDXL sets would not fit beside each other).

Only the main model changes; ``--upscaler``, ``--tiny-vae``, ``--vae``, LoRAs and the other load options given at
start apply to every model loaded (``options``). The caller holds the model lock while it switches.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass, field
from pathlib import Path

from diffdemo.engine.loading import ModelLoadError, load_models

CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
UNET_KEY = "model.diffusion_model.input_blocks.0.0.weight"


def scan_models(folder: str | Path) -> dict[str, Path]:
    """Name -> path of every model in ``folder`` (not recursive): diffusers folders (``model_index.json``) and
    one-file checkpoints; ``.safetensors`` files without a U-Net (LoRAs, VAEs, embeddings) are left out."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ModelLoadError(f"The models folder {folder} does not exist.")
    found = {}
    for path in sorted(folder.iterdir()):
        if path.is_dir() and (path / "model_index.json").is_file():
            found[path.name] = path
        elif path.suffix in CHECKPOINT_SUFFIXES and path.is_file() and _is_checkpoint(path):
            found[path.name] = path
    return found


def _is_checkpoint(path: Path) -> bool:
    if path.suffix != ".safetensors":
        return True  # a pickle's keys cost a full read; it is checked when chosen
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return UNET_KEY in handle.keys()
    except Exception:  # noqa: BLE001 - a damaged file is simply not listed
        return False


@dataclass
class ModelSwitcher:
    """The models of ``folder`` and the one loaded now. ``options``: keyword arguments of :func:`load_models`."""

    folder: Path
    current: object  # the loaded ModelSet
    current_name: str
    current_path: Path | None  # None: the embedded model
    options: dict = field(default_factory=dict)

    def names(self) -> list[str]:
        return list(scan_models(self.folder))

    def switch(self, name: str):
        """Frees the current model set, loads ``name`` and returns it. If ``name`` cannot be loaded, the previous
        one is loaded again and ModelLoadError says why. Call with no other reference to the current set alive."""
        available = scan_models(self.folder)
        if name not in available:
            shown = ", ".join(available) or "none"
            raise ModelLoadError(f"There is no model named '{name}' in {self.folder} (available: {shown}).")
        if name == self.current_name:
            return self.current
        self.current = None
        release_memory()
        try:
            self.current = load_models(str(available[name]), **self.options)
        except ModelLoadError as error:
            self.current = load_models(None if self.current_path is None else str(self.current_path), **self.options)
            raise ModelLoadError(f"{str(error).rstrip('.')}; still running {self.current_name}.") from None
        self.current_name, self.current_path = name, available[name]
        return self.current


def release_memory() -> None:
    """Hands freed tensors back: a garbage collection (modules hold reference cycles) and the device caches."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
