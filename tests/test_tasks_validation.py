"""Bad text-to-image requests raise InvalidRequest naming the field, and nothing else (checked before any work)."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest

from diffdemo.engine import SAMPLERS
from diffdemo.tasks import InvalidRequest, TextToImageRequest, text_to_image
from diffdemo.tasks.text_to_image import validate

VALID = TextToImageRequest(prompt="a red circle", steps=1, seed=3)

# (case id, field changed, bad value, word the message must mention)
CASES = [
    ("empty prompt", "prompt", "", "prompt"),
    ("whitespace prompt", "prompt", "  \n\t  ", "prompt"),
    ("none prompt", "prompt", None, "prompt"),
    ("non-text prompt", "prompt", 123, "prompt"),
    ("5000-char prompt", "prompt", "x" * 5000, "prompt"),
    ("5000-char negative", "negative_prompt", "x" * 5000, "negative prompt"),
    ("steps 0", "steps", 0, "steps"),
    ("steps -1", "steps", -1, "steps"),
    ("steps 1000000", "steps", 1_000_000, "steps"),
    ("steps 2.5", "steps", 2.5, "steps"),
    ("steps abc", "steps", "abc", "steps"),
    ("steps None", "steps", None, "steps"),
    ("steps inf", "steps", math.inf, "steps"),
    ("guidance nan", "guidance_scale", math.nan, "guidance"),
    ("guidance inf", "guidance_scale", math.inf, "guidance"),
    ("guidance -1", "guidance_scale", -1, "guidance"),
    ("guidance 1000", "guidance_scale", 1000, "guidance"),
    ("guidance text", "guidance_scale", "lots", "guidance"),
    ("width 100", "width", 100, "width"),
    ("width 100000", "width", 100_000, "width"),
    ("width 0", "width", 0, "width"),
    ("width -64", "width", -64, "width"),
    ("height 100", "height", 100, "height"),
    ("height 65.5", "height", 65.5, "height"),
    ("num_images 0", "num_images", 0, "num_images"),
    ("num_images 99", "num_images", 99, "num_images"),
    ("sampler Foo", "sampler", "Foo", "sampler"),
    ("sampler None", "sampler", None, "sampler"),
    ("seed -5", "seed", -5, "seed"),
    ("seed x", "seed", "x", "seed"),
    ("seed 2**32", "seed", 2**32, "seed"),
    ("seed 1.5", "seed", 1.5, "seed"),
]


@pytest.mark.parametrize("field, value, word", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_request(tiny_models, field, value, word):
    request = replace(VALID, **{field: value})
    calls = []
    try:
        text_to_image(tiny_models, request, callback=calls.append)
    except InvalidRequest as error:
        message = str(error)
    except Exception as error:  # noqa: BLE001 - anything but InvalidRequest is the failure being tested for
        pytest.fail(f"{field}={value!r} raised {type(error).__name__}: {error}")
    else:
        pytest.fail(f"{field}={value!r} was accepted")
    assert word.lower() in message.lower(), message
    assert 0 < len(message) < 300 and "\n" not in message, message
    assert calls == []  # rejected before any denoising


def test_unknown_sampler_lists_the_valid_ones(tiny_models):
    with pytest.raises(InvalidRequest) as error:
        text_to_image(tiny_models, replace(VALID, sampler="Foo"))
    message = str(error.value)
    assert "Foo" in message
    for name in SAMPLERS:
        assert name in message


def test_prompt_limit_message_gives_the_numbers(tiny_models):
    with pytest.raises(InvalidRequest, match="5000") as error:
        validate(tiny_models, replace(VALID, prompt="x" * 5000))
    assert "2000" in str(error.value)


def test_the_valid_base_request_runs(tiny_models):
    result = text_to_image(tiny_models, VALID)
    assert len(result.images) == 1 and result.metadata["seed"] == 3


@pytest.mark.parametrize("field, value, expected", [
    ("prompt", "  a   red\ncircle ", "a red circle"),
    ("steps", "4", 4),
    ("steps", 4.0, 4),
    ("guidance_scale", "7.5", 7.5),
    ("width", "48", 48),
    ("width", None, 64),
    ("seed", "17", 17),
    ("num_images", 2.0, 2),
])
def test_numbers_and_text_are_normalised(tiny_models, field, value, expected):
    request = validate(tiny_models, replace(VALID, **{field: value}))
    assert getattr(request, field) == expected
    assert type(getattr(request, field)) is type(expected)


def test_random_seed_is_drawn_in_range(tiny_models):
    seeds = {validate(tiny_models, replace(VALID, seed=-1)).seed for _ in range(5)}
    assert all(0 <= s <= 2**32 - 1 for s in seeds)
    assert len(seeds) > 1
    assert validate(tiny_models, replace(VALID, seed=None)).seed >= 0
