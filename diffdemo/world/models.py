"""Architectures of the embedded model set, as diffusers/transformers configs ("full" ships, "tiny" is for tests).

The main model is a Stable-Diffusion-layout latent diffusion model: CLIP text encoder, an 8×-per-side VAE
(128² images <-> 4×16×16 latents) and a cross-attention U-Net. The upscaler follows diffusers' x4 upscaler
layout (7-channel U-Net with noise-level conditioning, its own 4× VAE); the denoiser is a pixel-space DDPM.
Upscaler and denoiser have no attention, so they are fully convolutional and run at any size.
"""
from __future__ import annotations

from diffusers import AutoencoderKL, AutoencoderTiny, DDIMScheduler, DDPMScheduler, UNet2DConditionModel, UNet2DModel
from transformers import CLIPTextConfig, CLIPTextModel

# Zero terminal SNR + v-prediction + trailing timesteps (Lin et al. 2024): without it a small model cannot
# pick the background colour, because the last timestep still carries the initial noise's mean.
LATENT_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                       prediction_type="v_prediction", rescale_betas_zero_snr=True, timestep_spacing="trailing",
                       clip_sample=False, set_alpha_to_one=False, steps_offset=1)
PIXEL_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02,
                      prediction_type="epsilon", clip_sample=True)  # the original DDPM (Ho et al. 2020)
UPSCALER_NOISE_SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="linear", beta_start=0.0001, beta_end=0.02)
UPSCALER_SCALING_FACTOR = 0.08333  # diffusers' upscale pipeline forces this value on its VAE
MAX_NOISE_LEVEL = 350

_WIDTHS = {  # preset -> channel widths
    "full": dict(text=128, text_layers=4, vae=(32, 64, 128, 128), unet=(64, 96, 128), up_vae=(32, 64, 64),
                 up_unet=(32, 64, 64), denoiser=(32, 64, 64, 64), tiny_vae=32, layers=1, groups=32, up_groups=8),
    "tiny": dict(text=32, text_layers=2, vae=(8, 16, 16, 16), unet=(16, 32, 32), up_vae=(8, 16, 16),
                 up_unet=(16, 16, 16), denoiser=(8, 16, 16, 16), tiny_vae=8, layers=1, groups=8, up_groups=4),
}


def text_encoder(preset: str, tokenizer) -> CLIPTextModel:
    w = _WIDTHS[preset]
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=w["text"], intermediate_size=4 * w["text"],
                            num_hidden_layers=w["text_layers"], num_attention_heads=4,
                            max_position_embeddings=tokenizer.model_max_length, projection_dim=w["text"],
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                            pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def vae(preset: str, size: int, groups: int | None = None) -> AutoencoderKL:
    """The text-to-image model's 8× autoencoder. ``groups`` (default: the preset's, one channel a group at the
    first level, as shipped) sets its group norms; see :func:`upscaler_vae` for why several channels a group learn
    colours faster."""
    w = _WIDTHS[preset]
    return _autoencoder(w["vae"], w["layers"], groups or w["groups"], size)


def upscaler_vae(preset: str, size: int, latent_channels: int = 4) -> AutoencoderKL:
    """The upscaler's 4× autoencoder (4 latent channels as in Stable Diffusion's x4 upscaler unless asked).

    Its group norms have several channels a group (``up_groups``): with one channel a group, as ``groups`` gives at
    width 32, the decoder's last norm removes each channel's mean and spread over the image, so flat colours must be
    smuggled through spatial patterns and training is slow (measured: 19 dB against 26-28 dB on held-out photos
    after the same 200 s on a CPU). No attention, so it is fully convolutional and the same at any size."""
    w = _WIDTHS[preset]
    return _autoencoder(w["up_vae"], w["layers"], w["up_groups"], size, latent_channels, attention=False)


def tiny_vae(preset: str, levels: int = 4) -> AutoencoderTiny:
    """A TAESD-layout autoencoder (diffusers' ``AutoencoderTiny``) distilled from the VAE, for cheap x̂_0 frames.

    ``levels`` matches the VAE's (4 = 8× per side). The decoder's residual blocks run at 1/8 and 1/4 resolution;
    above that only one convolution per level, so a 128² frame costs about 8 ms on two CPU cores, against about
    100 ms for the VAE's decoder.
    """
    width = _WIDTHS[preset]["tiny_vae"]
    return AutoencoderTiny(encoder_block_out_channels=(width,) * levels, decoder_block_out_channels=(width,) * levels,
                           num_encoder_blocks=(0,) + (1,) * (levels - 1),
                           num_decoder_blocks=(2, 2) + (0,) * (levels - 2))


def _autoencoder(widths, layers, groups, size, latent_channels: int = 4, attention: bool = True) -> AutoencoderKL:
    n = len(widths)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels,
                         mid_block_add_attention=attention, block_out_channels=widths,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         layers_per_block=layers, norm_num_groups=groups, sample_size=size)


def unet(preset: str, latent_size: int, cross_attention_dim: int) -> UNet2DConditionModel:
    w = _WIDTHS[preset]
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, block_out_channels=w["unet"],
        layers_per_block=w["layers"], norm_num_groups=w["groups"], cross_attention_dim=cross_attention_dim,
        attention_head_dim=4,  # diffusers' legacy name: this is the number of heads
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))


def upscaler_unet(preset: str, latent_size: int, cross_attention_dim: int,
                  latent_channels: int = 4) -> UNet2DConditionModel:
    """x4-upscaler layout: input = latent + 3 low-res image channels; ``class_labels`` = noise level."""
    w = _WIDTHS[preset]
    n = len(w["up_unet"])
    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=latent_channels + 3, out_channels=latent_channels,
        block_out_channels=w["up_unet"], layers_per_block=w["layers"], norm_num_groups=w["up_groups"],
        cross_attention_dim=cross_attention_dim,
        down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n, mid_block_type="UNetMidBlock2D",
        num_class_embeds=1000)


def denoiser(preset: str, size: int) -> UNet2DModel:
    w = _WIDTHS[preset]
    n = len(w["denoiser"])
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, block_out_channels=w["denoiser"],
                       layers_per_block=w["layers"], norm_num_groups=w["groups"], add_attention=False,
                       down_block_types=("DownBlock2D",) * n, up_block_types=("UpBlock2D",) * n)


def latent_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**LATENT_SCHEDULE)


def pixel_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**PIXEL_SCHEDULE)
