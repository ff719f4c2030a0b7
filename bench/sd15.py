"""Stable Diffusion 1.5-architecture components from configs, with random weights and an offline tokenizer.

No download: the configs below are SD1.5's (U-Net ≈860 M parameters, VAE ≈84 M, CLIP ViT-L/14 text encoder
≈123 M); ``tiny=True`` keeps the same layout at a few thousand times less compute, for CPU smoke tests.
"""
from __future__ import annotations

import torch

UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), attention_head_dim=8, cross_attention_dim=768,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            norm_num_groups=32, act_fn="silu", flip_sin_to_cos=True, freq_shift=0, downsample_padding=1)
VAE = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
           block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
           up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, act_fn="silu", scaling_factor=0.18215)
TEXT = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768, layer_norm_eps=1e-5)
SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                 clip_sample=False, set_alpha_to_one=False, steps_offset=1)
TINY = dict(unet=dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1, cross_attention_dim=32,
                      attention_head_dim=4, sample_size=8),
            vae=dict(block_out_channels=(32, 32, 32, 32), layers_per_block=1, sample_size=64),
            text=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                      projection_dim=32))
WORDS = ("a photo of an astronaut riding horse on mars red blue green large small cat dog painting city night "
         "forest portrait landscape detailed").split()


def tokenizer(max_length: int = 77):
    """A word-level CLIP-style tokenizer built in memory (BOS/EOS around the words, EOS as padding, like SD1.5)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    specials = ["<|startoftext|>", "<|endoftext|>", "<unk>"]
    vocab = {word: i for i, word in enumerate(specials + sorted(set(WORDS)))}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="<|startoftext|> $A <|endoftext|>", special_tokens=[(t, vocab[t]) for t in specials[:2]])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=specials[0], eos_token=specials[1],
                                   pad_token=specials[1], unk_token=specials[2], model_max_length=max_length)


def components(tiny: bool = False, dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """``tokenizer``, ``text_encoder``, ``vae``, ``unet``, ``scheduler`` (DDIM, SD1.5 schedule) on the CPU."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    small = TINY if tiny else {"unet": {}, "vae": {}, "text": {}}
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**TEXT, **small["text"]}))
    vae = AutoencoderKL(**{**VAE, **small["vae"]})
    unet = UNet2DConditionModel(**{**UNET, **small["unet"]})
    modules = {"text_encoder": text_encoder, "vae": vae, "unet": unet}
    for module in modules.values():
        module.to(dtype).eval().requires_grad_(False)
    return dict(tokenizer=tokenizer(), scheduler=DDIMScheduler(**SCHEDULER), **modules)
