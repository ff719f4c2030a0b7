"""Compare: variants start from the same noise, step together by fraction of the run, and show that a 10-step run
is not the first half of a 20-step run."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from diffdemo.engine.sampling import make_scheduler
from diffdemo.tasks import InvalidRequest
from diffdemo.tasks.compare import (CompareRequest, Comparison, aligned_index, compare, frames_at, numbers_at,
                                    parse_variants, rms)
from diffdemo.tasks.trajectory import frame

PROMPT = "a large red star on a blue background"


def compare_of(models, variants, **settings):
    settings = {"prompt": PROMPT, "steps": 3, "seed": 11, "decode": "fast", **settings}
    return compare(models, CompareRequest(variants=variants, **settings))


@pytest.fixture(scope="module")
def ten_and_twenty(embedded_models):
    return compare_of(embedded_models, "steps=10\nsteps=20", seed=3)


def test_variants_share_the_initial_noise(tiny_models):
    result = compare_of(tiny_models, "steps=2\nsteps=4; guidance=7.5\nsampler=Euler a")
    comparison = result.comparison
    assert comparison.labels == ["steps=2", "steps=4 · guidance=7.5", "sampler=Euler a"]
    assert [len(run) for run in comparison.runs] == [2, 4, 3] and len(result.images) == 3
    assert [v["guidance_scale"] for v in result.metadata["variants"]] == [5.0, 7.5, 5.0]
    assert all(run.metadata["seed"] == 11 == result.metadata["seed"] for run in comparison.runs)
    noise = comparison.runs[0].x_t[0].float()
    assert torch.equal(comparison.runs[1].x_t[0].float(), noise)
    euler_sigma = make_scheduler("Euler a", tiny_models.scheduler.config)
    euler_sigma.set_timesteps(3)
    scaled = comparison.runs[2].x_t[0].float() / float(euler_sigma.init_noise_sigma)
    assert torch.allclose(scaled, noise, atol=2e-3)  # the same ε, times Euler's own initial σ
    assert "step_count_note" in result.metadata


def test_a_random_seed_is_drawn_once_for_all(tiny_models):
    comparison = compare_of(tiny_models, "guidance=1\nguidance=9", seed=-1, steps=1).comparison
    assert comparison.runs[0].metadata["seed"] == comparison.runs[1].metadata["seed"]
    assert torch.equal(comparison.runs[0].x_t[0], comparison.runs[1].x_t[0])


@pytest.mark.parametrize("percent, expected", [(0, (0, 0)), (1, (0, 0)), (50, (4, 9)), (55, (5, 10)),
                                               (100, (9, 19))])
def test_runs_step_together_by_fraction(ten_and_twenty, percent, expected):
    short, long = ten_and_twenty.comparison.runs
    assert (aligned_index(short, percent), aligned_index(long, percent)) == expected


def test_ten_steps_are_not_the_first_half_of_twenty(ten_and_twenty):
    """Step 10 of the 10-step run is its last (t near 0); step 10 of the 20-step run is half-way down the schedule."""
    short, long = ten_and_twenty.comparison.runs
    note = ten_and_twenty.metadata["step_count_note"]
    assert (note["short"], note["long"], note["step"]) == ("steps=10", "steps=20", 10)
    assert note["short_t"] == short.numbers[9]["t"] < 150 and note["long_t"] == long.numbers[9]["t"] > 400
    assert note["long_sigma"] > 4 * note["short_sigma"]
    assert note["x0_rms"] == pytest.approx(rms(short.x0[9], long.x0[9])) and note["x0_rms"] > 0.1
    finished, halfway = (np.asarray(frame(run, 9, "x0"), dtype=float) for run in (short, long))
    assert np.abs(finished - halfway).mean() > 5  # a different picture, not the same one reached earlier
    assert "not the first 10 steps of a 20-step run" in note["text"]
    # at the same fraction (50 %) the two runs are at nearby t, unlike at the same step number
    rows = numbers_at(ten_and_twenty.comparison, 50)
    assert abs(rows[0]["t"] - rows[1]["t"]) < abs(note["short_t"] - note["long_t"]) / 4


def test_numbers_and_frames_at_a_position(ten_and_twenty):
    comparison = ten_and_twenty.comparison
    rows = numbers_at(comparison, 100)
    assert [r["step"] for r in rows] == [9, 19] and all(r["to_final"] < 0.1 for r in rows)
    assert numbers_at(comparison, 0)[0]["to_final"] > rows[0]["to_final"]
    frames = frames_at(comparison, 30)
    assert len(frames) == 2 and all(image.size == (128, 128) for pair in frames for image in pair)


def test_same_step_counts_have_no_note(tiny_models):
    result = compare_of(tiny_models, "guidance=1\nguidance=9", steps=2)
    assert "step_count_note" not in result.metadata


@pytest.mark.parametrize("variants, message", [
    ("steps=10", "2 to 4 variants"),
    ("steps=1\nsteps=2\nsteps=3\nsteps=4\nsteps=5", "got 5"),
    ("steps=2\ncolour=red", "Variant 2 .*key=value"),
    ("steps=2\nsteps", "Variant 2"),
    ("steps=2\nsteps=abc", "Variant 2: steps must be a number"),
    ("steps=2\nsampler=Heun", "Variant 2: Unknown sampler"),
    ("steps=2\n\nsteps=2", "Variant 2 is the same as variant 1"),
])
def test_invalid_variants(tiny_models, variants, message):
    with pytest.raises(InvalidRequest, match=message):
        compare_of(tiny_models, variants)


def test_parse_variants_aliases():
    assert parse_variants("cfg=3; negative=blur\nguidance_scale=4 ; prompt=a red circle") == [
        {"guidance_scale": "3", "negative_prompt": "blur"}, {"guidance_scale": "4", "prompt": "a red circle"}]


def test_compare_handler_streams_then_shows(tiny_models, tmp_path):
    from diffdemo.ui.compare_tab import compare_handler, draw_comparison, numbers_table
    from diffdemo.ui.runner import Runner
    from diffdemo.ui.trajectory_tab import RunStore

    store = RunStore()
    handler = compare_handler(Runner(tiny_models, tmp_path), store)
    updates = list(handler(PROMPT, variants="steps=1\nsteps=2", seed=5, decode="fast"))
    assert [u[4] for u in updates[:-1]] == ["run 1 · step 1/1", "run 2 · step 1/2", "run 2 · step 2/2"]
    gallery, metadata, note, image, status, comparison_id = updates[-1]
    assert [caption for _, caption in gallery] == ["steps=1", "steps=2"] and status == "done: 2 runs"
    assert "not the first 1 steps" in note and isinstance(store.get(comparison_id), Comparison)
    *shown, table = draw_comparison(store, 4)(comparison_id, 50)  # 4 titles, then (x̂₀, x_t) of each of 4 columns
    assert shown[0].startswith("**steps=1** · step 1/1") and shown[1].startswith("**steps=2** · step 1/2")
    assert shown[4].size == (64, 64) and shown[8] is None  # x̂₀ of run 1; run 3's column is empty
    assert table.count("\n") == 3 and table == numbers_table(numbers_at(store.get(comparison_id), 50))


@pytest.mark.slow
def test_live_app_compare_and_branch(live_app):
    """/compare and /branch through the API; /branch continues this client's last /trajectory run."""
    from gradio_client import Client

    client = Client(live_app.url, verbose=False)
    try:
        api = client.view_api(return_format="dict", print_info=False)["named_endpoints"]
        names = [p["parameter_name"] for p in api["/compare"]["parameters"]]
        assert names == ["prompt", "variants", "negative_prompt", "sampler", "steps", "guidance_scale", "seed",
                         "decode"]
        assert [p["parameter_name"] for p in api["/branch"]["parameters"]] == ["step", "prompt", "guidance_scale",
                                                                               "run_file"]
        assert all(p["parameter_has_default"] for p in api["/compare"]["parameters"][1:])
        assert all(p["parameter_has_default"] for p in api["/branch"]["parameters"])
        gallery, metadata, note, _, status = client.predict(prompt=PROMPT, variants="steps=2\nsteps=4", seed=1,
                                                             decode="fast", api_name="/compare")
        assert len(gallery) == 2 and metadata["seed"] == 1 and "not the first 2 steps" in note
        client.predict(prompt=PROMPT, steps=4, seed=2, decode="fast", api_name="/trajectory")
        metadata, text, *_ = client.predict(step=2, prompt="a small green circle", api_name="/branch")
        assert metadata["branched_from"]["step"] == 2 and metadata["prompt"] == "a small green circle"
        assert metadata["seed"] == 2 and len(metadata["numbers"]) == 4 and "Branched at step 3" in text
    finally:
        client.close()
