"""Training data beyond the shape world (fetched-image manifests, random crops, the mixed stream) and resuming."""
from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from diffdemo.world import data, train
from diffdemo.world.training import TINY, ImageStream, rate_factor


def fake_fetch(root, counts=(("photo", 3), ("held_out", 1), ("art", 2))):
    """A data folder laid out as ``data.fetch`` writes it, with made-up pictures (no download)."""
    rng = np.random.default_rng(0)
    entries = []
    for split, n in counts:
        for i in range(n):
            file = root / "images" / "pkg" / f"{split}{i}.jpg"
            file.parent.mkdir(parents=True, exist_ok=True)
            height, width = 300 + 40 * i, 420
            gradient = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
            pixels = np.clip(gradient + rng.normal(0, 20, (height, width, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(file)
            entries.append({"file": str(file.relative_to(root)), "package": "pkg", "source": file.name,
                            "split": split, "size": [width, height]})
    (root / "manifest.json").write_text(json.dumps({"images": entries, "packages": {}}))
    return root


def test_every_package_lists_each_file_once_and_held_out_photos_are_not_trained_on():
    seen = [path for package in data.PACKAGES.values() for split in data.SPLITS for path in getattr(package, split)]
    assert len(seen) == len(set(seen))
    photos = {p for package in data.PACKAGES.values() for p in package.photo}
    held_out = {p for package in data.PACKAGES.values() for p in package.held_out}
    assert len(photos) >= 30 and len(held_out) >= 4 and not photos & held_out
    assert all(package.licence for package in data.PACKAGES.values())


def test_crop_pool_gives_seeded_square_crops_at_several_scales(tmp_path):
    images = data.load_split("photo", fake_fetch(tmp_path))
    first = data.CropPool(images, random.Random(1)).batch(6, 64)
    again = data.CropPool(images, random.Random(1)).batch(6, 64)
    other = data.CropPool(images, random.Random(2)).batch(6, 64)
    assert first.shape == (6, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, again) and not np.array_equal(first, other)
    # the horizontal gradient's slope shows the scale: a crop of the whole picture is steeper than a 64-px one
    slopes = {round(float(np.polyfit(np.arange(64), crop.mean((0, 2)), 1)[0]), 1) for crop in
              data.CropPool(images, random.Random(3)).batch(40, 64)}
    assert len(slopes) > 5


def test_load_split_without_a_fetch_says_how_to_fetch(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m diffdemo.world.data fetch"):
        data.load_split("photo", tmp_path)


def test_image_stream_mixes_photos_art_and_world_by_share(tmp_path):
    from dataclasses import replace

    cfg = replace(TINY, photo_share=0.5, art_share=0.25, data_dir=str(fake_fetch(tmp_path)))
    kinds, images = ImageStream(cfg, 0, 32, torch.device("cpu")).batch(400)
    assert images.shape == (400, 3, 32, 32) and -1 <= images.min() and images.max() <= 1
    share = {k: kinds.count(k) / len(kinds) for k in ("photo", "art", "world")}
    assert abs(share["photo"] - 0.5) < 0.08 and abs(share["art"] - 0.25) < 0.08, share
    world_only = ImageStream(TINY, 0, 32, torch.device("cpu")).batch(8)[0]
    assert world_only == ["world"] * 8


def test_image_stream_crops_world_scenes_rendered_at_full_size():
    stream = ImageStream(TINY, 0, 16, torch.device("cpu"), world_size=48)
    assert stream.world.size == 48  # the scenes are drawn at 48², so their shapes keep that pixel scale
    ramp = torch.arange(48.0).view(1, 1, 48) + 100 * torch.arange(48.0).view(1, 48, 1)  # value = 100·row + column
    stream.world.batch = lambda n: ([None] * n, ramp.expand(n, 3, 48, 48).clone())
    _, crops = stream.batch(64)
    assert crops.shape == (64, 3, 16, 16)
    rows, columns = crops[:, 0, 0, 0] // 100, crops[:, 0, 0, 0] % 100
    assert torch.equal(crops[:, 0], ramp[0, :16, :16] + (100 * rows + columns).view(-1, 1, 1))  # whole windows
    assert rows.max() <= 32 and columns.max() <= 32 and len(set(rows.tolist())) > 8  # anywhere inside the scene
    assert ImageStream(TINY, 0, 16, torch.device("cpu")).world.size == 16  # by default: drawn at the crop size


def test_public_evaluation_photos_are_centre_crops():
    photos = data.public_photos(128)
    assert set(photos) == set(data.PUBLIC_PHOTOS)
    assert all(p.shape == (128, 128, 3) and p.dtype == np.uint8 for p in photos.values())


def loss_curve(out, stage):
    return json.loads((out / "logs" / f"{stage}.json").read_text())["log"]["loss_curve"]


@pytest.mark.slow
def test_a_stopped_stage_resumes_to_the_curve_of_an_unbroken_run(tmp_path):
    """``--vae-steps 2`` then ``--vae-steps 4`` in one folder: the same loss curve and weights as 4 at once."""
    from safetensors.torch import load_file

    common = ["--preset", "tiny", "--stages", "vae", "--device", "cpu", "--checkpoint-minutes", "0"]
    train.main([*common, "--out", str(tmp_path / "whole"), "--vae-steps", "4"])
    train.main([*common, "--out", str(tmp_path / "parts"), "--vae-steps", "2"])
    assert (tmp_path / "parts" / "checkpoints" / "vae.pt").exists()
    train.main([*common, "--out", str(tmp_path / "parts"), "--vae-steps", "4"])
    assert loss_curve(tmp_path / "parts", "vae") == loss_curve(tmp_path / "whole", "vae")
    weights = [load_file(tmp_path / run / "model" / "vae" / "diffusion_pytorch_model.safetensors")
               for run in ("whole", "parts")]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_the_learning_rate_warms_up_holds_then_cools_down_to_zero():
    rates = [rate_factor(s, 100, warmup=10, cooldown=0.2) for s in range(100)]
    assert rates[0] == pytest.approx(0.1) and rates[9] == 1.0 and rates[80] == 1.0
    assert all(a > b for a, b in zip(rates[80:], rates[81:])) and 0 < rates[-1] <= 0.05
    assert [rate_factor(s, 100, 10) for s in (50, 99)] == [1.0, 1.0]  # no cool-down unless asked
    # a stage extended before its cool-down started rises back to the full rate
    assert rate_factor(70, 100, 10, 0.5) < 1.0 == rate_factor(70, 200, 10, 0.5)


def test_fine_tuning_starts_from_the_given_model_set(tmp_path):
    """``--init-from``: the denoiser stage starts from that folder's weights (one step at lr 0 changes nothing)."""
    from safetensors.torch import load_file

    common = ["--preset", "tiny", "--stages", "denoiser", "--device", "cpu"]
    train.main([*common, "--out", str(tmp_path / "first")])
    train.main([*common, "--out", str(tmp_path / "tuned"), "--init-from", str(tmp_path / "first"), "--lr", "0",
                "--denoiser-steps", "1", "--denoiser-clipped", "0.5"])
    before, after = (load_file(tmp_path / run / "denoiser" / "unet" / "diffusion_pytorch_model.safetensors")
                     for run in ("first", "tuned"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_an_upscaler_fine_tune_keeps_the_latent_space_it_starts_from(tmp_path):
    """``--init-from`` on the upscaler stage: the autoencoder (trained on smaller crops here) is not rescaled, so at
    learning rate 0 both its weights and the U-Net's come out as they went in."""
    from safetensors.torch import load_file

    common = ["--preset", "tiny", "--stages", "upscaler", "--device", "cpu"]
    train.main([*common, "--out", str(tmp_path / "first")])
    train.main([*common, "--out", str(tmp_path / "tuned"), "--init-from", str(tmp_path / "first"), "--lr", "0",
                "--vae-lr", "0", "--upscaler-vae-steps", "1", "--upscaler-steps", "1", "--upscaler-vae-crop", "32"])
    for part in ("vae", "unet"):
        before, after = (load_file(tmp_path / run / "upscaler" / part / "diffusion_pytorch_model.safetensors")
                         for run in ("first", "tuned"))
        assert all(torch.equal(before[k], after[k]) for k in before), part
    log = json.loads((tmp_path / "tuned" / "logs" / "upscaler.json").read_text())
    assert "latent_std_rescaled_from" not in log["log"]["vae"] and log["log"]["vae"]["steps"] == 1


def test_a_new_upscaler_can_have_more_latent_channels(tmp_path):
    """``--upscaler-latent-channels 8``: the autoencoder, and the U-Net that takes latents plus the low-res image
    and predicts latents, are built that wide, and the decoder stage samples from them."""
    train.main(["--preset", "tiny", "--stages", "upscaler,upscaler_decoder", "--device", "cpu", "--out",
                str(tmp_path), "--upscaler-latent-channels", "8", "--upscaler-vae-steps", "1", "--upscaler-steps", "1"])
    vae = json.loads((tmp_path / "upscaler" / "vae" / "config.json").read_text())
    unet = json.loads((tmp_path / "upscaler" / "unet" / "config.json").read_text())
    assert (vae["latent_channels"], unet["in_channels"], unet["out_channels"]) == (8, 11, 8)


def test_the_pixel_loss_decodes_the_x0_the_v_prediction_implies():
    """``decoded_x0_loss``: given the true velocity, x̂0 is the clean latent, so the loss is the back-projected
    decode's MSE against the image; the gradient reaches the prediction through the frozen decoder."""
    from diffusers import DDPMScheduler

    from diffdemo.tasks.super_resolution import back_project_tensor
    from diffdemo.world import models
    from diffdemo.world.stages.upscaler import decoded_x0_loss

    torch.manual_seed(0)
    vae = models.upscaler_vae("tiny", 32, 4).eval().requires_grad_(False)
    schedule = DDPMScheduler.from_config(models.latent_scheduler().config)
    latents, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    images, small = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 8, 8) * 2 - 1
    t = torch.tensor([10, 900])
    noisy = schedule.add_noise(latents, noise, t)
    v = schedule.get_velocity(latents, noise, t).requires_grad_(True)
    loss = decoded_x0_loss(vae, schedule, noisy, v, t, small, images)
    decoded = vae.decode(latents / vae.config.scaling_factor).sample
    assert loss.item() == pytest.approx(torch.nn.functional.mse_loss(back_project_tensor(decoded, small), images)
                                        .item(), rel=1e-4)
    loss.backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(p.grad is None for p in vae.parameters())


def test_an_upscaler_fine_tune_with_the_pixel_loss_trains_the_unet_alone(tmp_path):
    """``--upscaler-pixel-weight`` on 8×8-cell windows: the U-Net moves, the autoencoder it decodes with does not."""
    from safetensors.torch import load_file

    common = ["--preset", "tiny", "--stages", "upscaler", "--device", "cpu"]
    train.main([*common, "--out", str(tmp_path / "first")])
    train.main([*common, "--out", str(tmp_path / "tuned"), "--init-from", str(tmp_path / "first"),
                "--upscaler-vae-steps", "0", "--upscaler-steps", "2", "--upscaler-crop", "8",
                "--upscaler-pixel-weight", "10"])
    weights = "diffusion_pytorch_model.safetensors"
    (vae0, vae1), (unet0, unet1) = ([load_file(tmp_path / run / "upscaler" / part / weights)
                                     for run in ("first", "tuned")] for part in ("vae", "unet"))
    assert all(torch.equal(vae0[k], vae1[k]) for k in vae0)
    assert not all(torch.equal(unet0[k], unet1[k]) for k in unet0)
    log = json.loads((tmp_path / "tuned" / "logs" / "upscaler.json").read_text())
    assert log["config"]["upscaler_pixel_weight"] == 10
    assert all(np.isfinite(loss) for _, loss in log["log"]["unet"]["loss_curve"])


def test_a_new_vae_can_have_wider_norm_groups_and_train_on_crops(tmp_path):
    """``--vae-groups 4 --vae-crop 32``: the 8× autoencoder is built with 4 groups, trained on 32² images, and
    round-trips the full 64² size."""
    from diffusers import AutoencoderKL

    train.main(["--preset", "tiny", "--stages", "vae", "--device", "cpu", "--out", str(tmp_path),
                "--vae-groups", "4", "--vae-crop", "32", "--vae-steps", "1"])
    vae = AutoencoderKL.from_pretrained(tmp_path / "model" / "vae")
    assert vae.config.norm_num_groups == 4 and vae.decoder.conv_norm_out.num_groups == 4
    with torch.no_grad():
        assert vae.decode(vae.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()).sample.shape == (1, 3, 64, 64)
    log = json.loads((tmp_path / "logs" / "vae.json").read_text())
    assert log["config"]["vae_crop"] == 32 and log["log"]["steps"] == 1


def test_a_decoder_only_vae_fine_tune_keeps_the_latent_space(tmp_path):
    """``--vae-train decoder --vae-latent-noise 0.3``: the encoder (the U-Net's latent space) and the scaling factor
    stay bit-identical, the decoder learns; without --init-from, and with an unknown mode, a clear error."""
    from safetensors.torch import load_file

    common = ["--preset", "tiny", "--stages", "vae", "--device", "cpu"]
    train.main([*common, "--out", str(tmp_path / "first"), "--vae-steps", "1"])
    train.main([*common, "--out", str(tmp_path / "tuned"), "--init-from", str(tmp_path / "first"),
                "--vae-train", "decoder", "--vae-latent-noise", "0.3", "--vae-steps", "3"])
    before, after = (load_file(tmp_path / run / "model" / "vae" / "diffusion_pytorch_model.safetensors")
                     for run in ("first", "tuned"))
    frozen = [k for k in before if k.startswith(("encoder.", "quant_conv."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not all(torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    configs = [json.loads((tmp_path / run / "model" / "vae" / "config.json").read_text()) for run in ("first", "tuned")]
    assert configs[0]["scaling_factor"] == configs[1]["scaling_factor"]
    with pytest.raises(ValueError, match="--init-from"):
        train.main([*common, "--out", str(tmp_path / "alone"), "--vae-train", "decoder", "--vae-steps", "1"])
    with pytest.raises(ValueError, match="all or decoder"):
        train.main([*common, "--out", str(tmp_path / "odd"), "--init-from", str(tmp_path / "first"),
                    "--vae-train", "encoder", "--vae-steps", "1"])


def test_clipped_noise_targets_the_noise_an_8_bit_file_really_carries():
    from diffdemo.world.stages.denoiser import clip_some

    torch.manual_seed(0)
    x = torch.rand(8, 3, 16, 16) * 2 - 1
    noise, alpha_bar = torch.randn_like(x), torch.full((8,), 0.5)
    x_t, target = clip_some(x, noise, alpha_bar, share=1.0)
    y = x_t / alpha_bar.sqrt().view(-1, 1, 1, 1)
    assert y.min() >= -1 - 1e-6 and y.max() <= 1 + 1e-6  # clipped to the file's range
    assert torch.allclose(((y + 1) * 127.5), ((y + 1) * 127.5).round(), atol=1e-3)  # 8-bit levels
    assert torch.allclose(y - target, x, atol=1e-5)  # Tweedie's x̂0 = y − s·ε' is the clean image (s = 1 here)
    untouched, same = clip_some(x, noise, alpha_bar, share=0.0)
    assert torch.equal(same, noise)


def test_the_stage_clock_does_not_count_a_pause():
    """``--max-minutes-per-stage`` counts training, not the time the process was stopped beside other work."""
    from diffdemo.world.training import ActiveClock

    clock = ActiveClock(seconds=5.0)
    for _ in range(5):
        clock.last -= 2.0  # steps of 2 s
        clock.tick()
    clock.last -= 600.0  # stopped for 10 minutes
    clock.tick()
    assert 16.5 < clock.seconds < 17.5  # 5 + 5 steps of 2 s + one usual step for the pause


def test_a_resumed_unet_stage_reads_its_encoded_pools_instead_of_encoding_them_again(tmp_path, monkeypatch):
    from diffdemo.world.stages import unet as unet_stage

    common = ["--preset", "tiny", "--device", "cpu", "--checkpoint-minutes", "0"]
    train.main([*common, "--stages", "tokenizer,vae", "--out", str(tmp_path / "parts")])
    shutil.copytree(tmp_path / "parts", tmp_path / "whole")
    train.main([*common, "--stages", "unet", "--out", str(tmp_path / "whole"), "--unet-steps", "4"])
    train.main([*common, "--stages", "unet", "--out", str(tmp_path / "parts"), "--unet-steps", "2"])
    assert (tmp_path / "parts" / "checkpoints" / "unet_pools.pt").exists()

    def encode_again(*args, **kwargs):
        raise AssertionError("the pools were encoded again")

    monkeypatch.setattr(unet_stage, "encode_pool", encode_again)
    train.main([*common, "--stages", "unet", "--out", str(tmp_path / "parts"), "--unet-steps", "4"])
    assert loss_curve(tmp_path / "parts", "unet") == loss_curve(tmp_path / "whole", "unet")


def test_a_stage_stopped_by_its_time_cap_checkpoints_every_step_it_trained(tmp_path):
    """The cap ends the stage at the end of a logged stretch of steps, where a checkpoint can be saved."""
    train.main(["--preset", "tiny", "--stages", "vae", "--device", "cpu", "--out", str(tmp_path),
                "--checkpoint-minutes", "60", "--vae-steps", "60", "--max-minutes-per-stage", "1e-9"])
    log = json.loads((tmp_path / "logs" / "vae.json").read_text())["log"]
    saved = torch.load(tmp_path / "checkpoints" / "vae.pt", map_location="cpu", weights_only=False)
    assert 0 < log["steps"] < 60 and saved["done"] == log["steps"] == log["loss_curve"][-1][0]


def test_saved_pools_are_made_again_when_what_they_were_made_from_changes(tmp_path):
    from diffdemo.world.stages.unet import cached

    made = []

    def make():
        made.append(1)
        return torch.full((2,), float(len(made)))

    first = cached(tmp_path / "pools.pt", {"vae": "a"}, "cpu", make)
    again = cached(tmp_path / "pools.pt", {"vae": "a"}, "cpu", make)
    other = cached(tmp_path / "pools.pt", {"vae": "b"}, "cpu", make)
    assert len(made) == 2 and torch.equal(first, again) and not torch.equal(first, other)
