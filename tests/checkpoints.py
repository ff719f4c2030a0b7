"""Tiny models in the layouts users have, written by the tests: original-layout single files (the CompVis /
Stability key names AUTOMATIC1111, ComfyUI and civitai files use), SDXL and inpainting folders, fp16 variants.

``to_original`` maps diffusers/transformers state dicts back to the original key names (the inverse of what
diffusers' ``from_single_file`` converts), so a test can write a file exactly as such a tool would.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

UNET_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1",
               "norm2": "out_layers.0", "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
TEXT_PREFIX = {"sd1": "cond_stage_model.transformer.text_model.", "sdxl": "conditioner.embedders.0.transformer."
               "text_model."}
OPEN_CLIP_PREFIX = {"sd2": "cond_stage_model.model.", "sdxl": "conditioner.embedders.1.model."}


def _resnet(rest: str) -> str:
    name, _, tail = rest.partition(".")
    return f"{UNET_RESNET[name]}.{tail}"


def unet_to_original(state: dict, config) -> dict:
    """diffusers UNet2DConditionModel keys -> ``model.diffusion_model.*`` (LDM openaimodel) keys."""
    per = config.layers_per_block + 1  # input/output blocks per level (resnets + a down/upsampler)
    has_attention = ["CrossAttn" in t for t in config.up_block_types]
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2."}
    out = {}
    for key, value in state.items():
        new = next((ldm + key[len(d):] for d, ldm in fixed.items() if key.startswith(d)), None)
        if new is None:
            new = _unet_block_key(key, per, has_attention)
        out["model.diffusion_model." + new] = value
    return out


def _unet_block_key(key: str, per: int, has_attention: list[bool]) -> str:
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"input_blocks.{1 + i * per + j}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{1 + int(m[1]) * per + per - 1}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.resnets\.(\d+)\.(.*)", key):
        return f"middle_block.{2 * int(m[1])}.{_resnet(m[2])}"
    if m := re.match(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        return f"output_blocks.{i * per + j}." + (f"0.{_resnet(rest)}" if kind == "resnets" else f"1.{rest}")
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.*)", key):
        i = int(m[1])
        return f"output_blocks.{i * per + per - 1}.{2 if has_attention[i] else 1}.conv.{m[2]}"
    raise KeyError(key)


def vae_to_original(state: dict, config) -> dict:
    """diffusers AutoencoderKL keys -> ``first_stage_model.*`` (LDM autoencoder) keys."""
    levels = len(config.block_out_channels)
    out = {}
    for key, value in state.items():
        new = key.replace("conv_norm_out", "norm_out").replace("conv_shortcut", "nin_shortcut")
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", new)
        new = re.sub(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.resnets\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.block.", new)
        new = re.sub(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.",
                     lambda m: f"decoder.up.{levels - 1 - int(m[1])}.upsample.", new)
        new = re.sub(r"mid_block\.resnets\.(\d)\.", lambda m: f"mid.block_{int(m[1]) + 1}.", new)
        if ".mid_block.attentions.0." in new:
            new = new.replace("mid_block.attentions.0.", "mid.attn_1.")
            for diffusers_name, ldm_name in VAE_ATTENTION.items():
                new = new.replace(f"attn_1.{diffusers_name}.", f"attn_1.{ldm_name}.")
            if value.ndim == 2:  # LDM's attention uses 1×1 convolutions
                value = value[:, :, None, None]
        out["first_stage_model." + new] = value
    return out


def _plain_text_keys(state: dict) -> dict:
    return {k.removeprefix("text_model."): v for k, v in state.items() if not k.endswith("position_ids")}


def open_clip_to_original(state: dict, prefix: str, hidden: int) -> dict:
    """transformers CLIPTextModel(WithProjection) keys -> OpenCLIP's (``transformer.resblocks.*``, fused q/k/v)."""
    state = _plain_text_keys(state)
    out = {prefix + "token_embedding.weight": state["embeddings.token_embedding.weight"],
           prefix + "positional_embedding": state["embeddings.position_embedding.weight"],
           prefix + "ln_final.weight": state["final_layer_norm.weight"],
           prefix + "ln_final.bias": state["final_layer_norm.bias"],
           prefix + "text_projection": state.get("text_projection.weight", torch.eye(hidden)).T.contiguous()}
    layers = {int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")}
    for i in sorted(layers):
        src, dst = f"encoder.layers.{i}.", f"{prefix}transformer.resblocks.{i}."
        for kind in ("weight", "bias"):
            out[dst + f"attn.in_proj_{kind}"] = torch.cat([state[src + f"self_attn.{p}_proj.{kind}"] for p in "qkv"])
            out[dst + f"attn.out_proj.{kind}"] = state[src + f"self_attn.out_proj.{kind}"]
            for ours, theirs in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"),
                                 ("mlp.fc2", "mlp.c_proj")):
                out[dst + f"{theirs}.{kind}"] = state[src + f"{ours}.{kind}"]
    return out


def to_original(components: dict, family: str, *, vae: bool = True) -> dict:
    """The state dict of one original-layout file for ``family`` ("sd1", "sd2", "sdxl") from diffusers
    components (``unet``, ``vae``, ``text_encoder`` and for SDXL ``text_encoder_2``)."""
    unet = components["unet"]
    out = unet_to_original(unet.state_dict(), unet.config)
    if vae:
        out.update(vae_to_original(components["vae"].state_dict(), components["vae"].config))
    text = components["text_encoder"]
    if family == "sd2":
        out.update(open_clip_to_original(text.state_dict(), OPEN_CLIP_PREFIX["sd2"], text.config.hidden_size))
    else:
        out.update({TEXT_PREFIX[family] + k: v for k, v in _plain_text_keys(text.state_dict()).items()})
    if family == "sdxl":
        second = components["text_encoder_2"]
        out.update(open_clip_to_original(second.state_dict(), OPEN_CLIP_PREFIX["sdxl"], second.config.hidden_size))
    return {k: v.detach().contiguous() for k, v in out.items()}


def write_checkpoint(state: dict, path: Path, dtype=None) -> Path:
    """Writes ``state`` as ``.safetensors`` or a zip-pickle ``.ckpt`` (``{"state_dict": ...}``, as Lightning does)."""
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v) for k, v in state.items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, str(path))
    return path


# ---- tiny SDXL and inpainting models ----------------------------------------------------------------------------

def build_tiny_sdxl(tokenizer, latent_size: int = 8) -> dict:
    """A tiny SDXL: CLIP-L-like (32) and bigG-like (48, with projection) text encoders, a ``text_time`` U-Net."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from diffdemo.world import models

    torch.manual_seed(0)

    def text_config(hidden: int) -> CLIPTextConfig:
        return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                              num_hidden_layers=2, num_attention_heads=4, projection_dim=hidden,
                              max_position_embeddings=tokenizer.model_max_length, hidden_act="gelu",
                              bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                              pad_token_id=tokenizer.pad_token_id)

    text_encoder = CLIPTextModel(text_config(32)).eval()
    text_encoder_2 = CLIPTextModelWithProjection(text_config(48)).eval()
    unet = UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32 + 48, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 48,
        transformer_layers_per_block=(1, 2)).eval()
    vae = models.vae("tiny", latent_size * 8).eval()
    vae.register_to_config(scaling_factor=0.13025, force_upcast=True)
    return dict(tokenizer=tokenizer, tokenizer_2=tokenizer, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                unet=unet, vae=vae)


def sd2_components(tiny_components):
    """The tiny SD 1.x set with an OpenCLIP-convertible text encoder and linear projections, as SD 2.x has."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    tokenizer = tiny_components["tokenizer"]
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                        num_hidden_layers=2, num_attention_heads=4, hidden_act="gelu",
                                        max_position_embeddings=tokenizer.model_max_length)).eval()
    unet = UNet2DConditionModel.from_config({**tiny_components["unet"].config, "use_linear_projection": True})
    return {**tiny_components, "text_encoder": text, "unet": unet.eval()}


def inpainting_unet(unet):
    """A 9-channel copy of a tiny U-Net (x_t + mask + masked-image latents), as inpainting checkpoints have."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(2)
    config = {**unet.config, "in_channels": 2 * unet.config.out_channels + 1}
    return UNet2DConditionModel.from_config(config).eval()


# ---- fixtures (conftest.py loads this module as a plugin) -------------------------------------------------------


def save_pipeline(components: dict, folder: Path, variant: str | None = None) -> Path:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from diffdemo.world import models

    if "text_encoder_2" in components:
        pipe = StableDiffusionXLPipeline(**components, scheduler=models.latent_scheduler())
    else:
        pipe = StableDiffusionPipeline(**components, scheduler=models.latent_scheduler(), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder, variant=variant)
    return folder


@pytest.fixture(scope="session")
def tiny_sd1_file(tiny_root, tiny_components, tiny_model_dir):
    """The tiny SD 1.x model as one original-layout .safetensors file (its config folder: tiny_model_dir)."""
    return write_checkpoint(to_original(tiny_components, "sd1"), tiny_root / "tiny-sd1.safetensors")


@pytest.fixture(scope="session")
def tiny_sdxl_components(tiny_components):
    return build_tiny_sdxl(tiny_components["tokenizer"])


@pytest.fixture(scope="session")
def tiny_inpainting_components(tiny_components):
    return {**tiny_components, "unet": inpainting_unet(tiny_components["unet"])}


def layout_fixtures(kind: str):
    """Session fixtures ``tiny_KIND_dir`` (the saved diffusers folder of ``tiny_KIND_components``) and
    ``tiny_KIND_models`` (it, loaded)."""

    @pytest.fixture(scope="session", name=f"tiny_{kind}_dir")
    def folder(tiny_root, request):
        return save_pipeline(request.getfixturevalue(f"tiny_{kind}_components"), tiny_root / kind)

    @pytest.fixture(scope="session", name=f"tiny_{kind}_models")
    def loaded(request):
        from diffdemo.engine import load_models

        return load_models(str(request.getfixturevalue(f"tiny_{kind}_dir")), device="cpu")

    return folder, loaded


sdxl_dir_fixture, sdxl_models_fixture = layout_fixtures("sdxl")
inpainting_dir_fixture, inpainting_models_fixture = layout_fixtures("inpainting")


# ---- LoRAs ----------------------------------------------------------------------------------------------------

def make_lora(model_dir: Path, folder: Path, name: str, seed: int = 0, rank: int = 4) -> tuple[dict, dict]:
    """A random (non-zero) LoRA for the U-Net's attention and the text encoder of the model in ``model_dir``,
    saved in diffusers' format as ``folder/name.safetensors``; returns its (unet, text encoder) peft state dicts."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel.from_pretrained(model_dir, subfolder="unet")
    text = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    text.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=False,
                                target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]))
    layers = get_peft_model_state_dict(unet), get_peft_model_state_dict(text)
    folder.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers[0], text_encoder_lora_layers=layers[1],
                                              weight_name=f"{name}.safetensors")
    return layers


def lora_to_kohya(unet_layers: dict, text_layers: dict, rank: int = 4) -> dict:
    """The same LoRA in kohya-ss's layout (what AUTOMATIC1111 and civitai files use): ``lora_unet_<path>`` and
    ``lora_te_text_model_<path>`` modules with ``lora_down``/``lora_up`` weights and an ``alpha``."""
    out = {}
    for prefix, layers in (("lora_unet_", unet_layers), ("lora_te_text_model_", text_layers)):
        for key, value in layers.items():
            module, kind = key.rsplit(".lora_", 1)
            name = prefix + module.replace(".", "_")
            out[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = value.contiguous()
            out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out
