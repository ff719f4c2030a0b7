"""Branch: continue a recorded run from step k; unchanged settings repeat the original, a new prompt changes it."""
from __future__ import annotations

import importlib

import pytest
import torch

from diffdemo.tasks import InvalidRequest
from diffdemo.tasks.branch import BranchRequest, branch, read_run
from diffdemo.tasks.compare import rms
from diffdemo.tasks.trajectory import TrajectoryRequest, save_run, trajectory
from helpers import psnr

branch_module = importlib.import_module("diffdemo.tasks.branch")  # the package exports the function of that name
PROMPT = "a large red star on a blue background"
OTHER = "a small green circle on a white background"


def record(models, **settings):
    settings = {"prompt": PROMPT, "steps": 4, "seed": 5, "decode": "fast", **settings}
    return trajectory(models, TrajectoryRequest(**settings)).run


@pytest.mark.parametrize("sampler", ["DDIM", "DPM++ 2M", "UniPC", "Euler", "Euler a", "DDPM"])
def test_unchanged_branch_repeats_the_original(tiny_models, sampler):
    run = record(tiny_models, sampler=sampler)
    result = branch(tiny_models, run, BranchRequest(step=2))
    branched = result.run
    assert len(branched) == 4 and [n["step"] for n in branched.numbers] == [0, 1, 2, 3]
    assert torch.equal(branched.x_t[:3], run.x_t[:3])  # shared up to and including the branch point's x_t
    assert rms(branched.final, run.final) < 2e-3 * max(1.0, float(run.final.abs().mean()))
    assert result.metadata["branched_from"] == {"step": 2, "t": run.numbers[2]["t"], "prompt": PROMPT,
                                                "guidance_scale": 5.0}
    assert "replaying" in result.metadata["solver_state"]


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M"])
def test_replaying_the_solver_state_matters(tiny_models, sampler, monkeypatch):
    """Without the replay, Euler a draws other noise and DPM++ 2M restarts its history: the branch drifts."""
    run = record(tiny_models, sampler=sampler, steps=6)
    replayed = rms(branch(tiny_models, run, BranchRequest(step=3)).run.final, run.final)
    monkeypatch.setattr(branch_module, "replay", lambda *args: None)
    restarted = rms(branch(tiny_models, run, BranchRequest(step=3)).run.final, run.final)
    assert restarted > 10 * replayed


@pytest.mark.slow
def test_ddim_branch_reproduces_the_image_and_a_new_prompt_changes_it(embedded_models):
    run = record(embedded_models, steps=10, decode="vae")
    same = branch(embedded_models, run, BranchRequest(step=5))
    assert psnr(same.images[0], run.image) > 40
    changed = branch(embedded_models, run, BranchRequest(step=5, prompt=OTHER, guidance_scale=7.5))
    assert psnr(changed.images[0], run.image) < 25
    assert changed.metadata["prompt"] == OTHER and changed.metadata["guidance_scale"] == 7.5
    assert changed.comparison.labels == ["original", f"branch at step 6: prompt={OTHER} · guidance=7.5"]
    assert [n["guidance_scale"] for n in changed.run.numbers] == [5.0] * 5 + [7.5] * 5
    # an earlier branch point leaves the new prompt more room
    early = branch(embedded_models, run, BranchRequest(step=1, prompt=OTHER, guidance_scale=7.5))
    assert early.metadata["final_rms_vs_original"] > changed.metadata["final_rms_vs_original"]


def test_branch_a_saved_run(tiny_models, tmp_path):
    run = record(tiny_models, sampler="Euler a")
    path, _ = save_run(run, tmp_path / "run.safetensors")
    result = branch(tiny_models, read_run(path, tiny_models), BranchRequest(step=1))
    assert rms(result.run.final, run.final) < 2e-3 * max(1.0, float(run.final.abs().mean()))


def test_invalid_branches(tiny_models, embedded_models, tmp_path):
    run = record(tiny_models)
    with pytest.raises(InvalidRequest, match="no recorded run"):
        branch(tiny_models, None, BranchRequest(step=0))
    with pytest.raises(InvalidRequest, match="step must be between 0 and 3"):
        branch(tiny_models, run, BranchRequest(step=4))
    with pytest.raises(InvalidRequest, match="every step"):
        branch(tiny_models, record(tiny_models, every=2), BranchRequest(step=0))
    with pytest.raises(InvalidRequest, match="recorded with the model"):
        branch(embedded_models, run, BranchRequest(step=0))
    with pytest.raises(InvalidRequest, match="guidance_scale"):
        branch(tiny_models, run, BranchRequest(step=0, guidance_scale=-1))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a run")
    with pytest.raises(InvalidRequest, match="not a saved trajectory run"):
        read_run(junk, tiny_models)


def test_branch_handler_continues_the_run_shown(tiny_models, tmp_path):
    from diffdemo.ui.branch_section import branch_handler
    from diffdemo.ui.runner import Runner
    from diffdemo.ui.trajectory_tab import RunStore, trajectory_handler

    runner, runs, comparisons = Runner(tiny_models, tmp_path), RunStore(), RunStore()
    *_, run_id = list(trajectory_handler(runner, runs)(PROMPT, steps=3, seed=4, decode="fast"))[-1]
    updates = list(branch_handler(runner, runs, comparisons)(1, prompt=OTHER, run_id=run_id))
    assert [u[1] for u in updates[:-1]] == ["step 2/3", "step 3/3"]
    metadata, text, comparison_id = updates[-1]
    assert metadata["prompt"] == OTHER and metadata["guidance_scale"] == 5.0  # guidance -1 keeps the run's
    assert text.startswith("Branched at step 2")
    assert comparisons.get(comparison_id).labels[1] == f"branch at step 2: prompt={OTHER}"
