"""One-file checkpoints (AUTOMATIC1111 / ComfyUI / civitai layout): read safely, tell the family from the keys, load
offline with the configs shipped in diffdemo/configs/.

A ``.safetensors`` or ``.ckpt`` file in the original (CompVis / Stability) layout holds the U-Net under
``model.diffusion_model.``, the VAE under ``first_stage_model.`` and the text encoder(s) under
``cond_stage_model.transformer.`` (SD 1.x, OpenAI CLIP), ``cond_stage_model.model.`` (SD 2.x, OpenCLIP) or
``conditioner.embedders.0.`` + ``.1.`` (SDXL, CLIP-L + OpenCLIP bigG). diffusers converts each part
(``from_single_file(..., config=<folder>)``); the folder gives the architecture, so no hub access is needed.
``.ckpt`` files are pickles: they are opened with ``torch.load(weights_only=True)``, which refuses code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from diffdemo.engine.loading import ModelLoadError, reason

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOKENIZER = CONFIGS / "clip_tokenizer"
SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")
UNET = "model.diffusion_model."
VAE = "first_stage_model."
FAMILY_NAMES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}
TEXT_PREFIXES = {"sd1": "cond_stage_model.transformer.", "sd2": "cond_stage_model.model.",
                 "sdxl": "conditioner.embedders.1.model."}
# ComfyUI's heuristic for SD 2.x v-prediction files: their last attention block's norm bias is far from zero
V_PREDICTION_STD = 0.09


@dataclass(frozen=True)
class Checkpoint:
    """What the keys say about a one-file checkpoint."""

    family: str  # "sd1", "sd2" or "sdxl"
    in_channels: int  # 4, or 9 for an inpainting model
    prediction_type: str  # "epsilon" or "v_prediction"
    zero_snr: bool  # trained with zero terminal SNR (a "ztsnr" marker key)
    has_vae: bool

    def describe(self) -> str:
        kind = " inpainting" if self.in_channels == 9 else ""
        pred = ", v-prediction" if self.prediction_type == "v_prediction" else ""
        return f"{FAMILY_NAMES[self.family]}{kind} single file{pred}{', zero terminal SNR' if self.zero_snr else ''}"


def read_state_dict(path: Path) -> dict:
    """All tensors of ``path`` on the CPU. Pickled files load with ``weights_only=True`` (no code runs)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as error:  # noqa: BLE001 - any reader error means the same thing to the user
        raise ModelLoadError(_unreadable(path, error)) from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # Lightning checkpoints nest it
        state = state["state_dict"]
    if not isinstance(state, dict) or not any(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"The file {path} holds no weights (it is not a model checkpoint).")
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _is_zip(path: Path) -> bool:
    import zipfile

    return zipfile.is_zipfile(path)


def _unreadable(path: Path, error: Exception) -> str:
    if path.suffix != ".safetensors" and ("weights_only" in str(error) or "Unsupported global" in str(error)):
        return (f"The file {path} is a pickle that holds Python objects besides weights, which diffdemo does not "
                f"run (torch.load with weights_only=True refused it); convert it to .safetensors on a machine you "
                f"trust, or use a .safetensors copy of the model.")
    return f"Could not read {path} as a {path.suffix} checkpoint: the file is damaged or incomplete ({reason(error)})."


def inspect_checkpoint(state: dict, path: Path) -> Checkpoint:
    """The family, channels and prediction type of an original-layout file; raises ModelLoadError naming what
    the file is when diffdemo cannot run it."""
    keys = state.keys()
    conv_in = state.get(UNET + "input_blocks.0.0.weight")
    if conv_in is None:
        raise ModelLoadError(f"The file {path} is not a Stable Diffusion checkpoint: it {_what_it_is(keys)}.")
    family = _family(keys, path)
    if family is None:
        raise ModelLoadError(f"The file {path} holds a U-Net but no text encoder ({_ldm_text_found(keys)}); "
                             f"diffdemo needs a full SD 1.x, SD 2.x or SDXL checkpoint with its text encoder.")
    in_channels = int(conv_in.shape[1])
    if in_channels not in (4, 9):
        what = {7: "an x4 upscaler (pass a diffusers folder of it as --upscaler)",
                8: "an InstructPix2Pix image-editing model"}.get(in_channels, f"a U-Net with {in_channels} input "
                                                                            f"channels")
        raise ModelLoadError(f"The file {path} is {what}, which diffdemo cannot run as its main model; it runs text "
                             f"to image models with 4 input channels and inpainting models with 9.")
    return Checkpoint(family=family, in_channels=in_channels, prediction_type=_prediction_type(state, family),
                      zero_snr="ztsnr" in keys, has_vae=any(k.startswith(VAE) for k in keys))


def _family(keys, path: Path) -> str | None:
    if any(k.startswith("conditioner.embedders.0.model.") for k in keys):
        raise ModelLoadError(f"The file {path} is an SDXL refiner (one OpenCLIP text encoder, aesthetic-score "
                             "conditioning), which only refines SDXL base images; load an SDXL base checkpoint "
                             "instead.")
    for family, prefix in (("sdxl", TEXT_PREFIXES["sdxl"]), ("sd2", TEXT_PREFIXES["sd2"]),
                           ("sd1", TEXT_PREFIXES["sd1"])):
        if any(k.startswith(prefix) for k in keys):
            return family
    return None


def _ldm_text_found(keys) -> str:
    return "only model.diffusion_model weights" + (" and a VAE" if any(k.startswith(VAE) for k in keys) else "")


def _what_it_is(keys) -> str:
    """A few words naming what a file that is no SD checkpoint looks like, for the error message."""
    keys = list(keys)
    joined = " ".join(keys[:2000])
    if "lora_down" in joined or "lora_up" in joined or "lora_A" in joined or "lora_unet_" in joined:
        return "is a LoRA (pass it with --lora FILE[:WEIGHT] beside a base model)"
    if set(keys) & {"emb_params", "string_to_param", "clip_l", "clip_g"} or "string_to_param" in joined:
        return "is a textual-inversion embedding (pass it with --embedding FILE beside a base model)"
    if any(k.startswith(("double_blocks.", "model.diffusion_model.double_blocks.")) for k in keys):
        return "is a FLUX transformer, which diffdemo does not run (it runs SD 1.x, SD 2.x and SDXL)"
    if any("joint_blocks." in k for k in keys):
        return "is a Stable Diffusion 3 transformer, which diffdemo does not run (it runs SD 1.x, SD 2.x and SDXL)"
    if any(k.startswith(("control_model.", "controlnet_cond_embedding.")) for k in keys):
        return "is a ControlNet, which diffdemo does not run"
    if any(k.startswith(("encoder.down.", "first_stage_model.encoder.")) for k in keys) or \
            any(k.startswith("encoder.down_blocks.") for k in keys) and any(k.startswith("quant_conv") for k in keys):
        return "is a VAE on its own (pass it with --vae beside a base model)"
    if any(k.startswith(("encoder.layers.", "decoder.layers.")) for k in keys):
        return "is a tiny TAESD VAE (pass a diffusers folder of it with --tiny-vae)"
    if "conv_in.weight" in keys and any(k.startswith("down_blocks.") for k in keys):
        return "is a U-Net in diffusers' layout on its own (pass the whole diffusers folder instead)"
    shown = ", ".join(keys[:3])
    return f"has no model.diffusion_model.* U-Net weights (its first keys: {shown})"


def _prediction_type(state: dict, family: str) -> str:
    """v-prediction when the file says so (a ``v_pred`` marker key, as ComfyUI reads it) or, for SD 2.x text to
    image files, when the last attention block's norm bias is spread out as in SD 2.x 768-v (ComfyUI's test)."""
    if "v_pred" in state:
        return "v_prediction"
    if family != "sd2" or state[UNET + "input_blocks.0.0.weight"].shape[1] != 4:
        return "epsilon"  # SD 2.x inpainting is epsilon; SD 1.x and SDXL base are unless marked
    suffix = ".1.transformer_blocks.0.norm1.bias"
    biases = sorted((k for k in state if k.startswith(UNET + "output_blocks.") and k.endswith(suffix)),
                    key=lambda k: int(k[len(UNET + "output_blocks."):].split(".")[0]))
    if biases and torch.std(state[biases[-1]].float(), unbiased=False) > V_PREDICTION_STD:
        return "v_prediction"
    return "epsilon"


def load_single_file(path: str | Path, dtype: torch.dtype, config: str | Path | None = None,
                     need_vae: bool = True) -> dict:
    """Loads every part of a one-file checkpoint; returns ``ModelSet`` keyword arguments (modules on the CPU) plus
    ``checkpoint`` (a :class:`Checkpoint`). ``config``: a diffusers folder describing the architecture (default:
    the shipped one for the detected family). ``need_vae`` False: the file may lack a VAE (``--vae`` given)."""
    path = Path(path)
    state = read_state_dict(path)
    checkpoint = inspect_checkpoint(state, path)
    if need_vae and not checkpoint.has_vae:
        raise ModelLoadError(f"The file {path} holds no VAE (no first_stage_model.* weights); pass one with --vae "
                             f"(a VAE file or diffusers folder).")
    folder = Path(config) if config else CONFIGS / checkpoint.family
    if config and not (folder / "unet" / "config.json").is_file():
        raise ModelLoadError(f"The config folder {folder} has no unet/config.json; pass a diffusers model folder "
                             f"(its configs are enough) that describes {path.name}.")
    try:
        parts = _convert(state, checkpoint, folder, dtype, need_vae, explicit=config is not None)
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        raise ModelLoadError(f"The file {path} looks like an {checkpoint.describe()} but does not fit the config in "
                             f"{folder} ({reason(error)}); if it is a "
                             f"different architecture, pass a matching diffusers folder with --config.") from None
    parts["scheduler"] = _scheduler(folder, checkpoint, explicit=config is not None)
    parts.update(_tokenizers(folder, checkpoint.family))
    return {**parts, "checkpoint": checkpoint}


def _convert(state: dict, checkpoint: Checkpoint, folder: Path, dtype, need_vae: bool, explicit: bool) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    common = dict(config=str(folder), torch_dtype=dtype, local_files_only=True)
    unet_kwargs = {"in_channels": checkpoint.in_channels}
    if checkpoint.family == "sd2" and not explicit and checkpoint.prediction_type == "epsilon":
        unet_kwargs["sample_size"] = 64  # SD 2.x base and inpainting are 512-pixel models; 768-v is 96 latents
    parts = {"unet": UNet2DConditionModel.from_single_file(state, subfolder="unet", **common, **unet_kwargs)}
    if need_vae or checkpoint.has_vae:
        parts["vae"] = AutoencoderKL.from_single_file(state, subfolder="vae", **common)
    text = _normalised_clip_keys(state)
    parts["text_encoder"] = create_diffusers_clip_model_from_ldm(CLIPTextModel, text, subfolder="text_encoder",
                                                                 **common)
    if checkpoint.family == "sdxl":
        parts["text_encoder_2"] = create_diffusers_clip_model_from_ldm(
            CLIPTextModelWithProjection, text, subfolder="text_encoder_2", **common)
    return parts


def _normalised_clip_keys(state: dict) -> dict:
    """Some SD 1.x files were written by an older transformers without the ``text_model.`` level; diffusers'
    converter expects it."""
    prefix = TEXT_PREFIXES["sd1"]
    if any(k.startswith(prefix + "text_model.") for k in state) or not any(k.startswith(prefix) for k in state):
        return state
    return {(prefix + "text_model." + k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}


def _scheduler(folder: Path, checkpoint: Checkpoint, explicit: bool):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    if explicit:
        return DDIMScheduler.from_config(scheduler.config, clip_sample=False)
    overrides = {"prediction_type": checkpoint.prediction_type, "clip_sample": False}
    if checkpoint.zero_snr:
        overrides.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return DDIMScheduler.from_config(scheduler.config, **overrides)


def _tokenizers(folder: Path, family: str) -> dict:
    """The config folder's own tokenizer(s) if it has them, else the shipped CLIP BPE files. OpenCLIP encoders
    (SD 2.x, SDXL's second) pad with ``!``, OpenAI CLIP with ``<|endoftext|>``."""
    tokenizers = {"tokenizer": _tokenizer(folder / "tokenizer", "!" if family == "sd2" else None)}
    if family == "sdxl":
        tokenizers["tokenizer_2"] = _tokenizer(folder / "tokenizer_2", "!")
    return tokenizers


def _tokenizer(own: Path, pad_token: str | None):
    from transformers import CLIPTokenizer

    if own.is_dir():
        return CLIPTokenizer.from_pretrained(str(own))
    tokenizer = CLIPTokenizer.from_pretrained(str(TOKENIZER), **({"pad_token": pad_token} if pad_token else {}))
    tokenizer.model_max_length = 77
    return tokenizer


def load_vae_file(path: Path, dtype, family: str, like: dict | None):
    """A VAE on its own in one file (``--vae x.safetensors``): original keys (``encoder.down.*``, with or without
    ``first_stage_model.``) or diffusers keys; built with the config ``like`` (the VAE it replaces), else the
    family's shipped one."""
    from diffusers import AutoencoderKL

    state = read_state_dict(path)
    config = like or AutoencoderKL.load_config(str(CONFIGS / (family if family in FAMILY_NAMES else "sd1") / "vae"))
    original = any(k.startswith(("encoder.down.", VAE)) for k in state)
    if not original and not any(k.startswith("encoder.down_blocks.") for k in state):
        raise ModelLoadError(f"--vae {path}: the file is not a VAE: it {_what_it_is(state.keys())}.")
    try:
        if original:
            from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

            state = convert_ldm_vae_checkpoint(state, config)
        vae = AutoencoderKL.from_config(config)
        vae.load_state_dict(state)
        vae = vae.to(dtype)
    except (ValueError, KeyError, RuntimeError) as error:
        raise ModelLoadError(f"--vae {path}: the file does not fit a Stable Diffusion VAE ({reason(error)}).") from None
    return vae
