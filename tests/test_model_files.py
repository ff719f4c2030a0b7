"""The model files users have: one-file checkpoints (SD 1.x, 2.x, SDXL; .safetensors and .ckpt), SDXL folders,
9-channel inpainting models on every tab, fp16 variants, a swapped VAE, and the layouts refused in one line."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from checkpoints import save_pipeline, sd2_components, to_original, write_checkpoint
from test_loading import assert_one_sentence

from diffdemo.engine import ModelLoadError, load_models
from diffdemo.engine.single_file import CONFIGS, inspect_checkpoint
from helpers import pixels
from diffdemo.tasks import (BranchRequest, CompareRequest, ForwardRequest, InpaintRequest, SuperResolutionRequest,
                            TextToImageRequest, TrajectoryRequest, branch, compare, forward, inpaint, super_resolve,
                            text_to_image, trajectory)

PROMPT = "a red circle"


def make_image(models, seed=3):
    return text_to_image(models, TextToImageRequest(prompt=PROMPT, steps=2, seed=seed))


def square_mask(size=64):
    mask = np.zeros((size, size), np.uint8)
    mask[16:48, 16:48] = 255
    return mask


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- one-file checkpoints -------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_sd1_single_file_loads_bit_identical_and_makes_the_same_image(suffix, tiny_components, tiny_model_dir,
                                                                       tmp_path, tiny_root):
    path = write_checkpoint(to_original(tiny_components, "sd1"), tmp_path / f"model{suffix}")
    models = load_models(str(path), config=str(tiny_model_dir), device="cpu")
    assert models.family == "sd1" and models.source == "SD 1.x single file"
    for name in ("unet", "vae", "text_encoder"):
        assert same_weights(getattr(models, name), tiny_components[name]), name
    folder = load_models(str(tiny_model_dir), device="cpu")
    assert np.array_equal(pixels(make_image(models)), pixels(make_image(folder)))
    assert pixels(inpaint(models, InpaintRequest(image=pixels(make_image(models)), mask=square_mask(), steps=2,
                                                 seed=1))).shape == (64, 64, 3)


def test_sdxl_single_file_loads_both_text_encoders(tiny_sdxl_components, tiny_sdxl_dir, tiny_sdxl_models, tmp_path):
    path = write_checkpoint(to_original(tiny_sdxl_components, "sdxl"), tmp_path / "xl.safetensors",
                            dtype=torch.float16)  # civitai files are mostly fp16
    models = load_models(str(path), config=str(tiny_sdxl_dir), device="cpu")
    assert models.family == "sdxl" and models.text_encoder_2 is not None and models.force_zeros_for_empty_prompt
    assert models.unet.dtype == torch.float32  # loaded in the dtype asked for, not the file's
    for name in ("unet", "text_encoder", "text_encoder_2"):
        expected = {k: v.half().float() for k, v in tiny_sdxl_components[name].state_dict().items()}
        got = getattr(models, name).state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected), name
    assert pixels(make_image(models)).shape == (64, 64, 3)


def test_sd2_single_file_detects_v_prediction(tiny_components, tmp_path):
    state = to_original(tiny_components, "sd1")
    sd2 = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.model.X"): v
           for k, v in state.items()}  # only the prefix decides the family here
    assert inspect_checkpoint(sd2, tmp_path).family == "sd2"
    assert inspect_checkpoint(sd2, tmp_path).prediction_type == "epsilon"  # zero norm biases: SD 2.x base
    last = max((k for k in sd2 if k.endswith(".1.transformer_blocks.0.norm1.bias") and "output_blocks" in k),
               key=lambda k: int(k.split(".")[3]))
    v_like = {**sd2, last: torch.randn(sd2[last].shape, generator=torch.Generator().manual_seed(0)) * 0.5}
    assert inspect_checkpoint(v_like, tmp_path).prediction_type == "v_prediction"
    marked = {**state, "v_pred": torch.tensor([])}  # the marker some SD 1.x/SDXL v-prediction files carry
    assert inspect_checkpoint(marked, tmp_path).prediction_type == "v_prediction"
    assert inspect_checkpoint({**state, "ztsnr": torch.tensor([])}, tmp_path).zero_snr


def test_sd2_openclip_single_file_loads_bit_identical(tiny_components, tmp_path):
    components = sd2_components(tiny_components)
    folder = save_pipeline(components, tmp_path / "sd2")
    models = load_models(str(write_checkpoint(to_original(components, "sd2"), tmp_path / "sd2.ckpt")),
                         config=str(folder), device="cpu")
    assert models.family == "sd2"
    assert all(same_weights(getattr(models, n), components[n]) for n in ("unet", "vae", "text_encoder"))
    assert pixels(make_image(models)).shape == (64, 64, 3)


def test_shipped_configs_describe_the_real_architectures():
    """Parameter counts of the released models (SD 1.5, SD 2.1, SDXL base 1.0), built on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def count(module) -> int:
        return sum(p.numel() for p in module.parameters())

    expected = {("sd1", "unet"): 859_520_964, ("sd2", "unet"): 865_910_724, ("sdxl", "unet"): 2_567_463_684,
                ("sd1", "vae"): 83_653_863, ("sdxl", "vae"): 83_653_863, ("sd1", "text_encoder"): 123_060_480,
                ("sd2", "text_encoder"): 340_387_840, ("sdxl", "text_encoder_2"): 694_659_840}
    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
    for (family, part), params in expected.items():
        folder = CONFIGS / family / part
        with init_empty_weights():
            if part in classes:
                module = classes[part].from_config(classes[part].load_config(str(folder)))
            else:
                cls = CLIPTextModelWithProjection if part == "text_encoder_2" else CLIPTextModel
                module = cls(CLIPTextConfig.from_pretrained(str(folder)))
        assert count(module) == params, (family, part)


def test_shipped_tokenizer_is_clips():
    from diffdemo.engine.single_file import _tokenizer

    tokenizer = _tokenizer(CONFIGS / "none", None)
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert _tokenizer(CONFIGS / "none", "!").pad_token_id == 0  # OpenCLIP pads with "!"


# ---- SDXL and inpainting models on every tab -------------------------------------------------------------------

def run_every_tab(models) -> dict:
    """Each model tab's task once (2 steps, 64²); returns the results by tab."""
    image = pixels(make_image(models))
    results = {"text_to_image": make_image(models),
               "inpaint": inpaint(models, InpaintRequest(image=image, mask=square_mask(), prompt=PROMPT, steps=2,
                                                         seed=1)),
               "super_resolution": super_resolve(models, SuperResolutionRequest(image=image[:32, :32], scale=2,
                                                                                steps=2, samples=1, seed=1)),
               "compare": compare(models, CompareRequest(prompt=PROMPT, variants="steps=1\nsteps=2", seed=1)),
               "forward": forward(models, ForwardRequest(image=image, t=500, seed=1))}
    run = trajectory(models, TrajectoryRequest(prompt=PROMPT, steps=2, seed=1))
    results["trajectory"] = run
    results["branch"] = branch(models, run.run, BranchRequest(step=1, prompt="a blue star"))
    return results


@pytest.mark.parametrize("fixture", ["tiny_sdxl_models", "tiny_inpainting_models"])
def test_every_tab_runs(fixture, request):
    models = request.getfixturevalue(fixture)
    results = run_every_tab(models)
    assert pixels(results["text_to_image"]).shape == (64, 64, 3)
    assert pixels(results["inpaint"]).shape == (64, 64, 3)
    assert pixels(results["super_resolution"]).shape == (64, 64, 3)
    assert len(results["trajectory"].images) == 2
    assert pixels(results["branch"]).shape == (64, 64, 3)
    # a seed reproduces, another differs
    assert np.array_equal(pixels(make_image(models, 5)), pixels(make_image(models, 5)))
    assert not np.array_equal(pixels(make_image(models, 5)), pixels(make_image(models, 6)))


def test_sdxl_passes_pooled_prompt_and_size_ids(tiny_sdxl_models):
    from diffdemo.engine.prompts import encode_prompt

    prompt = encode_prompt(tiny_sdxl_models, PROMPT, "", batch=2)
    assert prompt.cond.shape == (2, 24, 32 + 48) and prompt.pooled.shape == (2, 48)
    assert torch.count_nonzero(prompt.uncond) == 0 and torch.count_nonzero(prompt.pooled_uncond) == 0
    cond, uncond = prompt.added_conditions(64, 96)
    assert cond["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]] * 2
    other = encode_prompt(tiny_sdxl_models, "a blue star")
    assert not torch.equal(other.pooled, prompt.pooled[:1])


def test_sdxl_float16_keeps_the_vae_in_float32(tiny_sdxl_dir):
    models = load_models(str(tiny_sdxl_dir), device="cpu", dtype="float16")
    assert models.unet.dtype == torch.float16 and models.text_encoder_2.dtype == torch.float16
    assert models.vae.dtype == torch.float32  # force_upcast: SDXL's VAE overflows in float16
    assert pixels(make_image(models)).std() > 0


def test_inpainting_model_uses_a_full_mask_for_plain_generation(tiny_inpainting_models):
    from diffdemo.engine.conditioning import whole_image_mask_channels

    extra = whole_image_mask_channels(tiny_inpainting_models, 2, 64, 64)
    assert extra.shape == (2, 5, 8, 8) and torch.all(extra[:, 0] == 1)
    assert make_image(tiny_inpainting_models).metadata["model"] == tiny_inpainting_models.name


# ---- variants, --vae and the layouts refused --------------------------------------------------------------------

@pytest.fixture(scope="module")
def fp16_only_dir(tiny_components, tmp_path_factory):
    folder = save_pipeline({**tiny_components, **{n: tiny_components[n] for n in ("unet", "vae", "text_encoder")}},
                           tmp_path_factory.mktemp("variant") / "model", variant="fp16")
    assert not list(folder.glob("unet/diffusion_pytorch_model.safetensors"))
    return folder


def test_fp16_variant_is_found_without_being_told(fp16_only_dir, tiny_components):
    models = load_models(str(fp16_only_dir), device="cpu")
    assert "fp16" in models.source
    assert same_weights(models.unet, tiny_components["unet"])
    assert load_models(str(fp16_only_dir), device="cpu", variant="fp16").source == models.source


def test_missing_variant_names_what_was_found(fp16_only_dir):
    with pytest.raises(ModelLoadError) as error:
        load_models(str(fp16_only_dir), device="cpu", variant="bf16")
    message = str(error.value)
    assert "--variant bf16" in message and "fp16" in message
    assert_one_sentence(message)


def test_vae_swap_from_a_folder_and_a_file(tiny_model_dir, tiny_components, tmp_path):
    from diffdemo.world import models as world

    torch.manual_seed(9)
    other = world.vae("tiny", 64).eval()
    other.save_pretrained(tmp_path / "vae")
    swapped = load_models(str(tiny_model_dir), vae=str(tmp_path / "vae"), device="cpu")
    assert same_weights(swapped.vae, other)
    from checkpoints import vae_to_original

    file = write_checkpoint({k.removeprefix("first_stage_model."): v for k, v in
                             vae_to_original(other.state_dict(), other.config).items()}, tmp_path / "vae.safetensors")
    from_file = load_models(str(tiny_model_dir), vae=str(file), device="cpu")
    assert same_weights(from_file.vae, other)


def test_tiny_autoencoder_as_vae_is_refused_in_one_line(tiny_model_dir, tmp_path):
    from diffdemo.world import models as world

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    shutil.rmtree(folder / "vae")
    world.tiny_vae("tiny").save_pretrained(folder / "vae")
    with pytest.raises(ModelLoadError) as error:
        load_models(str(folder), device="cpu")
    message = str(error.value)
    assert "AutoencoderTiny" in message and "--tiny-vae" in message
    assert_one_sentence(message)


class NotWeights:
    pass


@pytest.mark.parametrize("kind, expected", [
    ("lora", "LoRA"), ("vae", "VAE"), ("embedding", "textual-inversion"), ("flux", "FLUX"), ("refiner", "refiner"),
    ("upscaler", "upscaler"), ("unet_only", "no text encoder"), ("pickle", "weights_only"), ("junk", "damaged"),
    ("no_vae", "--vae")])
def test_refused_files_get_one_line_naming_what_was_found(kind, expected, tiny_components, tmp_path):
    sd1 = to_original(tiny_components, "sd1")
    states = {"lora": {"lora_unet_down_blocks_0.lora_down.weight": torch.zeros(4, 4)},
              "vae": {"encoder.down.0.block.0.conv1.weight": torch.zeros(4, 4), "quant_conv.weight": torch.zeros(4)},
              "embedding": {"emb_params": torch.zeros(4, 4)},
              "flux": {"double_blocks.0.img_attn.norm.key_norm.scale": torch.zeros(4)},
              "refiner": {**sd1, "conditioner.embedders.0.model.ln_final.weight": torch.zeros(4)},
              "upscaler": {**sd1, "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(16, 7, 3, 3)},
              "unet_only": {k: v for k, v in sd1.items() if k.startswith("model.diffusion_model.")},
              "no_vae": {k: v for k, v in sd1.items() if not k.startswith("first_stage_model.")}}
    path = tmp_path / ("model.ckpt" if kind == "pickle" else "model.safetensors")
    if kind == "pickle":
        torch.save({"state_dict": sd1, "callback": NotWeights()}, str(path))
    elif kind == "junk":
        path.write_bytes(b"\x00" * 100)
    else:
        write_checkpoint(states[kind], path)
    with pytest.raises(ModelLoadError) as error:
        load_models(str(path), device="cpu")
    message = str(error.value)
    assert expected in message and str(path) in message, message
    assert_one_sentence(message)


def test_transformer_folder_is_refused(tmp_path):
    (tmp_path / "transformer").mkdir()
    (tmp_path / "model_index.json").write_text('{"_class_name": "FluxPipeline", "transformer": ["diffusers", "x"]}')
    with pytest.raises(ModelLoadError, match="FluxPipeline"):
        load_models(str(tmp_path), device="cpu")


# ---- DDIM from a PNDM config ------------------------------------------------------------------------------------

def test_ddim_from_a_pndm_config_does_not_clip_x0(tiny_model_dir, tmp_path):
    """SD 1.x folders carry a PNDM scheduler config, which has no clip_sample key; DDIM and DDPM built from it
    would default to clipping x̂_0 to ±1 at every step, which is wrong for latents (they exceed ±1)."""
    import json

    from diffdemo.engine.sampling import make_scheduler

    folder = tmp_path / "pndm"
    shutil.copytree(tiny_model_dir, folder)
    pndm = {"_class_name": "PNDMScheduler", "beta_start": 0.00085, "beta_end": 0.012, "num_train_timesteps": 1000,
            "beta_schedule": "scaled_linear", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(pndm))  # as SD 1.5's folder has it
    assert "clip_sample" not in json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    models = load_models(str(folder), device="cpu")
    for sampler in ("DDIM", "DDPM"):
        assert make_scheduler(sampler, models.scheduler.config).config.clip_sample is False, sampler
    largest = []
    text_to_image(models, TextToImageRequest(prompt=PROMPT, steps=4, seed=0, sampler="DDIM"),
                  callback=lambda step: largest.append(float(step.x0_pred.abs().max())))
    assert max(largest) > 1.0  # x̂_0 of an untrained model at high noise; clipping would cap it at 1
