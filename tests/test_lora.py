"""LoRAs (diffusers and kohya/A1111 files, --lora and <lora:name:weight> tags) and textual inversion."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from checkpoints import lora_to_kohya, make_lora, write_checkpoint
from test_loading import assert_one_sentence

from diffdemo.engine import ModelLoadError, load_models
from diffdemo.engine.lora import LoraError, file_hash, parse_lora_option, split_prompt
from diffdemo.tasks import InpaintRequest, TextToImageRequest, inpaint, text_to_image

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def lora_dir(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("loras")
    layers = make_lora(tiny_model_dir, folder, "ink")
    write_checkpoint(lora_to_kohya(*layers), folder / "ink_kohya.safetensors")
    make_lora(tiny_model_dir, folder, "other", seed=1)
    return folder


@pytest.fixture(scope="module")
def lora_models(tiny_model_dir, lora_dir):
    """A fresh model set (LoRAs add adapters to its modules) with prompt tags resolved from ``lora_dir``."""
    return load_models(str(tiny_model_dir), device="cpu", lora_dir=str(lora_dir))


def image(models, prompt=PROMPT, seed=3) -> np.ndarray:
    return np.asarray(text_to_image(models, TextToImageRequest(prompt=prompt, steps=2, seed=seed)).images[0])


def test_weight_zero_is_the_plain_image_and_weight_one_differs(tiny_models, lora_models):
    plain = image(tiny_models)
    assert np.array_equal(image(lora_models, f"{PROMPT} <lora:ink:0>"), plain)
    with_lora = image(lora_models, f"{PROMPT} <lora:ink:1>")
    assert not np.array_equal(with_lora, plain)
    assert np.array_equal(image(lora_models, PROMPT), plain)  # the next request without a tag: off again
    assert np.array_equal(image(lora_models, f"{PROMPT} <lora:ink>"), with_lora)  # no weight means 1
    assert not np.array_equal(image(lora_models, f"{PROMPT} <lora:ink:0.5>"), with_lora)


def test_infotext_records_the_lora_as_a1111_does(lora_models, lora_dir):
    result = text_to_image(lora_models, TextToImageRequest(prompt=f"{PROMPT} <lora:ink:0.8>", steps=2, seed=1))
    parameters = result.images[0].info["parameters"]
    short = file_hash(lora_dir / "ink.safetensors")[:12]
    assert parameters.splitlines()[0] == f"{PROMPT} <lora:ink:0.8>"  # the prompt as typed
    assert parameters.endswith(f'Lora hashes: "ink: {short}"')
    assert result.metadata["loras"] == [{"name": "ink", "weight": 0.8, "short_hash": short}]
    painted = inpaint(lora_models, InpaintRequest(image=np.zeros((64, 64, 3), np.uint8),
                                                  mask=np.full((64, 64), 255, np.uint8),
                                                  prompt=f"{PROMPT} <lora:ink:0.8>", steps=2, seed=1))
    assert f'Lora hashes: "ink: {short}"' in painted.images[0].info["parameters"]


def test_addnet_hash_ignores_the_safetensors_header(lora_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "ink.safetensors"
    save_file(load_file(str(lora_dir / "ink.safetensors")), str(copy), metadata={"ss_note": "edited"})
    assert file_hash(copy) == file_hash(lora_dir / "ink.safetensors")


def test_kohya_file_gives_the_same_image_as_the_diffusers_file(lora_models):
    kohya, diffusers = f"{PROMPT} <lora:ink_kohya:1>", f"{PROMPT} <lora:ink:1>"
    assert np.array_equal(image(lora_models, kohya), image(lora_models, diffusers))


def test_lora_changes_the_text_encoder_too(lora_models):
    from diffdemo.engine.prompts import encode_prompt

    off = encode_prompt(lora_models, PROMPT).cond
    on = encode_prompt(lora_models, f"{PROMPT} <lora:ink:1>").cond
    assert not torch.equal(off, on)


def test_two_loras_and_the_fixed_option(tiny_model_dir, lora_dir, tiny_models):
    fixed = load_models(str(tiny_model_dir), device="cpu", loras=[f"{lora_dir / 'ink.safetensors'}:0.7"],
                        lora_dir=str(lora_dir))
    tagged = load_models(str(tiny_model_dir), device="cpu", lora_dir=str(lora_dir))
    assert np.array_equal(image(fixed), image(tagged, f"{PROMPT} <lora:ink:0.7>"))
    assert np.array_equal(image(fixed, f"{PROMPT} <lora:ink:0>"), image(tiny_models))  # a tag overrides --lora
    both = text_to_image(fixed, TextToImageRequest(prompt=f"{PROMPT} <lora:other:0.5>", steps=2, seed=3))
    assert "ink: " in both.images[0].info["parameters"] and "other: " in both.images[0].info["parameters"]


def test_prompt_tags_parse():
    assert split_prompt("a cat <lora:ink:0.8> in <lora:b> snow") == ("a cat in snow", {"ink": 0.8, "b": 1.0})
    assert parse_lora_option("/x/y.safetensors:0.5") == (parse_lora_option("/x/y.safetensors")[0], 0.5)
    with pytest.raises(LoraError, match="not a number"):
        split_prompt("<lora:ink:strong>")


@pytest.mark.parametrize("prompt, expected", [("<lora:nobody:1> cat", "no LoRA named 'nobody'"),
                                              ("<lora:ink:99>", "between")])
def test_bad_lora_tags_give_one_line(lora_models, prompt, expected):
    with pytest.raises(LoraError) as error:
        text_to_image(lora_models, TextToImageRequest(prompt=prompt, steps=1, seed=0))
    assert expected in str(error.value)
    assert_one_sentence(str(error.value))


def test_tag_without_a_lora_folder(tiny_models):
    with pytest.raises(LoraError, match="--lora-dir"):
        text_to_image(tiny_models, TextToImageRequest(prompt="<lora:ink:1> a cat", steps=1, seed=0))


def test_lora_for_another_model_is_refused_in_one_line(tiny_model_dir, tmp_path):
    write_checkpoint({"lora_unet_nowhere_to_q.lora_down.weight": torch.zeros(4, 7),
                      "lora_unet_nowhere_to_q.lora_up.weight": torch.zeros(5, 4)}, tmp_path / "bad.safetensors")
    with pytest.raises(ModelLoadError) as error:
        load_models(str(tiny_model_dir), device="cpu", loras=[str(tmp_path / "bad.safetensors")])
    assert "bad.safetensors" in str(error.value)
    assert_one_sentence(str(error.value))


def test_textual_inversion_embedding_is_triggered_by_its_file_name(tiny_model_dir, tmp_path, tiny_models):
    from diffdemo.engine.prompts import encode_prompt

    dim = tiny_models.text_encoder.config.hidden_size
    torch.save({"string_to_param": {"*": torch.randn(1, dim) * 3}, "name": "glow"}, tmp_path / "glow.pt")  # A1111
    models = load_models(str(tiny_model_dir), device="cpu", embeddings=[str(tmp_path / "glow.pt")])
    assert "glow" in models.tokenizer.get_vocab()
    assert not torch.equal(encode_prompt(models, "a glow circle").cond, encode_prompt(models, "a circle").cond)
    assert image(models, "a glow circle").shape == (64, 64, 3)
    json.dumps(text_to_image(models, TextToImageRequest(prompt="glow", steps=1, seed=0)).metadata, default=str)
