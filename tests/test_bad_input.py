"""Bad input through the API, sent as the page would send it but without its slider bounds or type checks: every
case gets a clear one-sentence message (or, for odd but valid pictures, a result), nothing raw (tracebacks,
exception names, server paths) reaches the client, and the server keeps serving. Live app: tests/fast_app.py."""
from __future__ import annotations

import math
import re
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from fast_app import bomb_png, fn_index, raw_data, raw_result, upload, write_image, write_mask

OK = None  # the case must succeed


class OrOk(str):
    """The case may succeed (Gradio coerced the value) or fail with this message."""

RAW = re.compile(r"Traceback|File \"|\w+Error\b|Exception|/tmp/|site-packages|upstream Gradio|validation error")
FAST = {"steps": 2}  # settings added to every case unless it sets them itself


class F(str):
    """A case value naming one of the test files: uploaded, then sent as the page sends a file."""


# (id, endpoint, values, what the message must say (a regular expression, any case), or OK)
CASES = [
    ("t2i empty prompt", "text_to_image", dict(prompt=""), "prompt"),
    ("t2i blank prompt", "text_to_image", dict(prompt=" \n\t "), "prompt"),
    ("t2i 100k-char prompt", "text_to_image", dict(prompt="a " * 50_000), "2000"),
    ("t2i prompt as a list", "text_to_image", dict(prompt=["a red circle"]), OrOk("must be text")),
    ("t2i steps 0", "text_to_image", dict(steps=0), "minimum|between"),
    ("t2i steps -1", "text_to_image", dict(steps=-1), "minimum|between"),
    ("t2i steps 10^6", "text_to_image", dict(steps=10**6), "maximum|between"),
    ("t2i steps 2.5", "text_to_image", dict(steps=2.5), "whole number"),
    ("t2i guidance NaN", "text_to_image", dict(guidance_scale=math.nan), "guidance"),
    ("t2i guidance inf", "text_to_image", dict(guidance_scale=math.inf), "maximum|finite"),
    ("t2i width 100", "text_to_image", dict(width=100), "multiple of 8"),
    ("t2i width 10^5", "text_to_image", dict(width=100_000), "maximum|between"),
    ("t2i height -64", "text_to_image", dict(height=-64), "minimum|between"),
    ("t2i 99 images", "text_to_image", dict(num_images=99), "maximum|between"),
    ("t2i unknown sampler", "text_to_image", dict(sampler="Foo"), "Foo"),
    ("t2i sampler as a list", "text_to_image", dict(sampler=["DDIM"]), "sampler"),
    ("t2i seed 2^40", "text_to_image", dict(seed=2**40), "seed"),
    ("t2i seed text", "text_to_image", dict(seed="abc"), "seed"),
    ("t2i steps text", "text_to_image", dict(steps="many"), "steps"),
    ("inpaint strength 1.5", "inpaint", dict(strength=1.5), "strength"),
    ("inpaint strength NaN", "inpaint", dict(strength=math.nan), "strength"),
    ("inpaint corrupt image", "inpaint", dict(image=F("corrupt")), "could not be read"),
    ("inpaint corrupt mask", "inpaint", dict(mask=F("corrupt")), "mask could not be read"),
    ("inpaint 64-MP bomb", "inpaint", dict(image=F("bomb")), "megapixels"),
    ("inpaint 400-MP bomb", "inpaint", dict(image=F("huge_bomb")), "too large"),
    ("inpaint RGBA", "inpaint", dict(image=F("rgba")), OK),
    ("inpaint L", "inpaint", dict(image=F("l")), OK),
    ("inpaint P", "inpaint", dict(image=F("p")), OK),
    ("inpaint CMYK JPEG", "inpaint", dict(image=F("cmyk")), OK),
    ("inpaint 16-bit", "inpaint", dict(image=F("i16")), OK),
    ("inpaint mask of another size", "inpaint", dict(mask=F("small_mask")), OK),  # resized to the picture
    ("inpaint empty mask", "inpaint", dict(mask=F("empty_mask")), "mask is empty"),
    ("inpaint no mask", "inpaint", dict(mask=None), "No mask"),
    ("inpaint unknown sampler", "inpaint", dict(sampler="Foo"), "Foo"),
    ("inpaint blur -1", "inpaint", dict(mask_blur=-1), "mask_blur"),
    ("inpaint outpaint 13 px", "inpaint", dict(outpaint_left=13), "multiple of 8"),
    ("inpaint invert 'yes'", "inpaint", dict(invert_mask="yes"), "invert_mask"),
    ("inpaint image as text", "inpaint", dict(image="a red circle"), "uploaded first"),
    ("inpaint server path", "inpaint", dict(image={"path": "/etc/hostname"}), "uploaded as a file"),
    ("denoise sigma NaN", "denoise", dict(sigma=math.nan), "sigma"),
    ("denoise sigma 1000", "denoise", dict(sigma=1000), "maximum|between"),
    ("denoise steps 0", "denoise", dict(steps=0), "minimum|between"),
    ("denoise unknown sampler", "denoise", dict(sampler="Euler"), "Euler"),
    ("denoise 16-bit", "denoise", dict(image=F("i16")), OK),
    ("denoise CMYK JPEG", "denoise", dict(image=F("cmyk")), OK),
    ("denoise no image", "denoise", dict(image=None), "No image"),
    ("denoise corrupt image", "denoise", dict(image=F("corrupt")), "could not be read"),
    ("denoise 64-MP bomb", "denoise", dict(image=F("bomb")), "megapixels"),
    ("denoise seed text", "denoise", dict(seed="abc"), "seed"),
    ("sr scale 3", "super_resolve", dict(scale=3), r"\[2, 4\]|2 or 4"),
    ("sr noise 10^6", "super_resolve", dict(noise_level=10**6), "maximum|between"),
    ("sr output too large", "super_resolve", dict(image=F("large"), scale=4), "output"),
    ("sr RGBA", "super_resolve", dict(image=F("small_rgba")), OK),
    ("sr corrupt image", "super_resolve", dict(image=F("corrupt")), "could not be read"),
    ("trajectory every 0", "trajectory", dict(every=0), "minimum|between"),
    ("trajectory decode foo", "trajectory", dict(decode="foo"), "foo"),
    ("trajectory empty prompt", "trajectory", dict(prompt=""), "prompt"),
    ("trajectory steps 10^6", "trajectory", dict(steps=10**6), "maximum|between"),
    ("trajectory decode tiny without a tiny VAE", "trajectory", dict(decode="tiny"), "tiny"),
    ("compare one variant", "compare", dict(variants="steps=3"), "2 to 4"),
    ("compare variant not a setting", "compare", dict(variants="steps=abc\nsteps=3"), "steps"),
    ("compare empty prompt", "compare", dict(prompt=""), "prompt"),
    ("compare decode foo", "compare", dict(decode="foo"), "foo"),
    ("forward t 5000", "forward", dict(t=5000), "maximum|between"),
    ("forward no image", "forward", dict(image=None), "No image"),
    ("forward corrupt image", "forward", dict(image=F("corrupt")), "could not be read"),
    ("forward unknown sampler", "forward", dict(sampler="Foo"), "Foo"),
    ("playground unknown data set", "playground", dict(dataset="foo"), "foo"),
    ("playground points 0", "playground", dict(points=0), "minimum|between"),
    ("playground iterations 10^9", "playground", dict(iterations=10**9), "maximum|between"),
]
VALID = {"text_to_image": dict(prompt="a red circle", seed=1),
         "inpaint": dict(image=F("picture"), mask=F("mask"), prompt="a red circle", seed=1),
         "denoise": dict(image=F("picture"), sigma=50, seed=1),
         "super_resolve": dict(image=F("small"), scale=2, seed=1),
         "trajectory": dict(prompt="a red circle", seed=1, decode="fast"),
         "compare": dict(prompt="a red circle", variants="steps=2\nsteps=3", seed=1, decode="fast"),
         "forward": dict(image=F("picture"), t=100, seed=1),
         "playground": dict(points=100, iterations=200, steps=5)}
NO_STEPS = {"forward"}  # endpoints without a steps parameter


@pytest.fixture(scope="module")
def app(fast_live_app):
    return fast_live_app


@pytest.fixture(scope="module")
def files(app, tmp_path_factory):
    """Every test file, uploaded once: name -> the payload the page sends."""
    folder = tmp_path_factory.mktemp("inputs")
    paths = {"picture": write_image(folder / "picture.png"), "mask": write_mask(folder / "mask.png"),
             "small": write_image(folder / "small.png", size=(16, 16)),
             "small_rgba": write_image(folder / "small-rgba.png", "RGBA", size=(16, 16)),
             "rgba": write_image(folder / "rgba.png", "RGBA"), "l": write_image(folder / "l.png", "L"),
             "p": write_image(folder / "p.png", "P"), "i16": write_image(folder / "i16.png", "I;16"),
             "cmyk": write_image(folder / "cmyk.jpg", "CMYK", fmt="JPEG"),
             "small_mask": write_mask(folder / "small-mask.png", size=(32, 32), box=(8, 8, 24, 24)),
             "empty_mask": write_mask(folder / "empty-mask.png", box=(0, 0, 0, 0))}
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    (folder / "bomb.png").write_bytes(bomb_png(8000, 8000))
    (folder / "huge-bomb.png").write_bytes(bomb_png(20_000, 20_000))
    Image.new("RGB", (1100, 1100), "blue").save(folder / "large.png")
    paths.update(corrupt=folder / "corrupt.png", bomb=folder / "bomb.png", huge_bomb=folder / "huge-bomb.png",
                 large=folder / "large.png")
    return {name: upload(app.url, path) for name, path in paths.items()}


def ask(app, files, api: str, values: dict) -> SimpleNamespace:
    values = {**({} if api in NO_STEPS else FAST), **VALID[api], **values}
    data = raw_data(app.url, api, **{k: files[v] if isinstance(v, F) else v for k, v in values.items()})
    message = raw_result(app.url, fn_index(app.demo, api), data)
    return SimpleNamespace(success=message["success"], error=message["output"].get("error") or "",
                           data=message["output"].get("data"))


def _values(case) -> tuple:
    return case.values if hasattr(case, "marks") else case  # a pytest.param or a plain tuple


def _case(case):
    values = _values(case)
    return pytest.param(*values[1:], id=values[0], marks=getattr(case, "marks", ()))


@pytest.mark.parametrize("api, values, word", [_case(c) for c in CASES])
def test_bad_input_gets_a_clear_message(app, files, api, values, word):
    answer = ask(app, files, api, values)
    if word is OK or (isinstance(word, OrOk) and answer.success):
        assert answer.success, answer.error
        return
    assert not answer.success, f"accepted: {answer.data}"
    assert re.search(word, answer.error, re.IGNORECASE), answer.error
    assert not RAW.search(answer.error), answer.error
    assert 0 < len(answer.error) < 400, answer.error


def test_the_matrix_is_large_enough():
    passing = [c for c in CASES if not hasattr(c, "marks")]
    assert len(passing) >= 30
    assert {_values(c)[1] for c in passing} == set(VALID)


@pytest.mark.parametrize("api", VALID)
def test_the_server_still_serves_every_tab_afterwards(app, files, api):
    answer = ask(app, files, api, {})
    assert answer.success, answer.error
    first = answer.data[0]
    path = first[-1]["image"]["path"] if isinstance(first, list) else first["path"]
    with Image.open(path) as image:
        assert np.asarray(image).size > 0
