"""One plain function per capability; typed request in, images + metadata out. No gradio here."""
from diffdemo.engine.sampling import DEFAULT_SAMPLER, SAMPLERS, Cancelled, Step
from diffdemo.tasks.branch import BranchRequest, branch
from diffdemo.tasks.common import InvalidRequest, TaskResult, save_png
from diffdemo.tasks.compare import CompareRequest, compare
from diffdemo.tasks.denoise import DENOISE_SAMPLERS, DenoiseRequest, NoiseSweepRequest, denoise, noise_sweep
from diffdemo.tasks.forward import ForwardRequest, forward, noise_schedule
from diffdemo.tasks.inpaint import InpaintRequest, inpaint
from diffdemo.tasks.playground import DATASETS, PLAYGROUND_SAMPLERS, PlaygroundCache, PlaygroundRequest, playground
from diffdemo.tasks.super_resolution import SuperResolutionRequest, super_resolve
from diffdemo.tasks.text_to_image import TextToImageRequest, text_to_image
from diffdemo.tasks.trajectory import TrajectoryRequest, load_run, trajectory

__all__ = ["DEFAULT_SAMPLER", "SAMPLERS", "Cancelled", "InpaintRequest", "InvalidRequest", "Step", "TaskResult",
           "TextToImageRequest", "inpaint", "save_png", "text_to_image"]
__all__ += ["DENOISE_SAMPLERS", "DenoiseRequest", "NoiseSweepRequest", "denoise", "noise_sweep"]
__all__ += ["SuperResolutionRequest", "super_resolve"]
__all__ += ["TrajectoryRequest", "load_run", "trajectory"]
__all__ += ["ForwardRequest", "forward", "noise_schedule"]
__all__ += ["DATASETS", "PLAYGROUND_SAMPLERS", "PlaygroundCache", "PlaygroundRequest", "playground"]
__all__ += ["BranchRequest", "CompareRequest", "branch", "compare"]
