"""What one visitor may ask of this server, and where each limit is enforced.

- before a job is queued (each model event's Gradio ``validator``): the request's estimated cost
  (:mod:`diffdemo.tasks.budget`) and the visitor's share of the queue (:mod:`.gate`); a refusal is one sentence
  that names the limit and its flag, shown in the browser and raised by ``gradio_client`` as a ValidationError
  (plain HTTP: 422). Bad input is not refused here: the task answers it as the job's error, as before;
- while it runs: a time limit, checked at the end of every step (``Runner.job_seconds``);
- around every request: the request guard (:mod:`.guard`): uploads, bodies, logins, malformed calls;
- for the whole process: ``PIL.Image.MAX_IMAGE_PIXELS``, so that no decoder ever expands a small file into a huge
  picture (Gradio decodes some inputs before the app sees them).

:func:`install_limits` applies them to a built app and returns the extra ``launch()`` arguments; ``app.py`` and
the tests' live apps both go through it.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
import ipaddress
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace

import gradio as gr
from PIL import Image
from starlette.middleware import Middleware

from diffdemo.engine.speed import measure_speeds
from diffdemo.engine.threads import model_thread
from diffdemo.tasks import (CompareRequest, DenoiseRequest, ForwardRequest, InpaintRequest, InvalidRequest,
                            NoiseSweepRequest, PlaygroundRequest, SuperResolutionRequest, TextToImageRequest,
                            TrajectoryRequest)
from diffdemo.tasks.branch import BranchRequest, read_run
from diffdemo.tasks.budget import check_cost, estimate
from diffdemo.ui.app import GPU_GROUP, MAX_FILE_SIZE
from diffdemo.ui.gate import JobGate, OperatorCancelled, Refused, client_address
from diffdemo.ui.guard import Guard, RequestGuard
from diffdemo.ui.runner import check_uploads, uploaded_path
from diffdemo.ui.space import on_spaces
from diffdemo.ui.uploads import MB, UploadGuard

log = logging.getLogger("diffdemo")
# each model event's function name -> the task request its inputs fill, field by field ("branch" is special)
TASK_REQUESTS = {"text_to_image": TextToImageRequest, "inpaint": InpaintRequest, "denoise": DenoiseRequest,
                 "psnr_vs_noise": NoiseSweepRequest, "super_resolve": SuperResolutionRequest,
                 "trajectory": TrajectoryRequest, "compare": CompareRequest, "forward": ForwardRequest,
                 "refresh": ForwardRequest, "playground": PlaygroundRequest}
MESSAGE_ON = ("prompt", "image", "steps", "dataset")  # the input a refusal is shown on (the first one present)


@dataclass(frozen=True)
class Limits:
    """Every limit, with the flag or environment variable that sets it (README, "Deploy")."""

    max_cost: float = 30.0  # estimated seconds of model time one request may need (--max-cost, DIFFDEMO_MAX_COST)
    job_seconds: float = 60.0  # a job still running after this stops at the end of its step (--job-seconds)
    jobs_per_session: int = 2  # jobs one visitor (a browser tab, an API client) may have waiting or running
    jobs_per_address: int = 4  # the same for one client address, where it is known (DIFFDEMO_JOBS_PER_ADDRESS)
    proxy_hops: int = 0  # trusted proxies that append the client's address to X-Forwarded-For (1 on a Space)
    upload_file_size: str = MAX_FILE_SIZE  # one uploaded file
    upload_request_bytes: int = 32 * MB  # one upload request, all its files together (DIFFDEMO_UPLOAD_MB)
    upload_files: int = 8  # files in one upload request (DIFFDEMO_UPLOAD_FILES)
    upload_window_bytes: int = 256 * MB  # uploads from one address per window (DIFFDEMO_UPLOAD_WINDOW_MB)
    upload_window_seconds: float = 600.0
    unused_upload_seconds: float = 900.0  # an upload no request used is deleted after this
    max_image_pixels: int = 8_000_000  # PIL refuses to open images over twice this: 16 MP, the largest input
    admin_token: str | None = None  # turns on /diffdemo/admin/ (--admin-token, DIFFDEMO_ADMIN_TOKEN)

    @classmethod
    def for_server(cls, *, public: bool, gpu: bool, environ: Mapping[str, str] = os.environ, **given) -> Limits:
        """The defaults for this server, then environment variables, then ``given`` (command-line values; None
        means not given). A public server (a Space, a share link, any address but loopback) and a CPU get stricter
        defaults: a request of at most 30 s (60 s on a local GPU), a job of at most twice that, 2 jobs per visitor."""
        env = {name: environ.get(f"DIFFDEMO_{name.upper()}") for name in
               ("max_cost", "job_seconds", "jobs_per_session", "jobs_per_address", "proxy_hops", "upload_mb",
                "upload_files", "upload_window_mb", "admin_token")}
        values = {k: v for k, v in env.items() if v not in (None, "")}
        values.update({k: v for k, v in given.items() if v is not None})
        max_cost = float(values.get("max_cost", 60.0 if gpu and not public else 30.0))
        numbers = dict(max_cost=max_cost, job_seconds=float(values.get("job_seconds", 2 * max_cost)),
                       jobs_per_session=int(values.get("jobs_per_session", 2 if public else 4)),
                       jobs_per_address=int(values.get("jobs_per_address", 4)),
                       proxy_hops=int(values.get("proxy_hops", 1 if on_spaces(environ) else 0)),
                       upload_request_bytes=int(float(values.get("upload_mb", 32)) * MB),
                       upload_files=int(values.get("upload_files", 8)),
                       upload_window_bytes=int(float(values.get("upload_window_mb", 256)) * MB))
        return cls(**numbers, admin_token=values.get("admin_token") or None)

    def describe(self) -> str:
        """One line for the start-up log."""
        return (f"diffdemo: limits: {self.max_cost:g} s of estimated model time per request (--max-cost), jobs stop "
                f"after {self.job_seconds:g} s (--job-seconds), {self.jobs_per_session} jobs per visitor "
                f"(--jobs-per-session)" + (", admin routes on" if self.admin_token else ""))


def is_public(server_name: str | None, share: bool, environ: Mapping[str, str] = os.environ) -> bool:
    """True when strangers can reach the app: a Space, a share link, or an address other than loopback."""
    if share or on_spaces(environ):
        return True
    try:
        return not ipaddress.ip_address(server_name or "127.0.0.1").is_loopback
    except ValueError:
        return server_name != "localhost"


def install_limits(demo: gr.Blocks, limits: Limits, speeds=None, group: str = GPU_GROUP) -> dict:
    """Applies ``limits`` to ``demo`` (built by build_demo, queue configured, after any ZeroGPU wrapping, so the
    gate counts jobs in this process); ``speeds`` (engine.speed.Speeds) prices requests, None turns pricing off.
    Returns the keyword arguments ``launch()`` needs: the upload cap and the request guard."""
    Image.MAX_IMAGE_PIXELS = limits.max_image_pixels
    runner = demo.runner
    runner.job_seconds = limits.job_seconds
    gate = JobGate(limits.jobs_per_session, limits.jobs_per_address)
    uploads = UploadGuard(limits.upload_request_bytes, limits.upload_files, limits.upload_window_bytes,
                          limits.upload_window_seconds, limits.unused_upload_seconds)
    demo.pricing = pricing = Pricing(speeds)
    runner.after_switch.append(pricing.retime)
    for block_fn in demo.fns.values():
        if block_fn.concurrency_id == group and block_fn.fn is not None:
            block_fn.validator = _validator(block_fn, runner, pricing, limits, gate)
            block_fn.fn = _gated(block_fn.fn, gate)
    demo.guard = Guard(demo, limits, gate, uploads, runner)
    return {"max_file_size": limits.upload_file_size,
            "app_kwargs": {"middleware": [Middleware(RequestGuard, guard=demo.guard)]}}


class Pricing:
    """The speeds requests are priced with (None: no pricing), timed again when a model switch loads another model
    (not when they are a guess: ZeroGPU has no GPU outside a request)."""

    def __init__(self, speeds):
        self.speeds = speeds

    def retime(self, models) -> None:
        if self.speeds is not None and self.speeds.measured and models is not None:
            self.speeds = model_thread().run(measure_speeds, models)


def _validator(block_fn, runner, pricing: Pricing, limits: Limits, gate: JobGate):
    """Gradio calls this with the event's inputs before it queues the job: a price over the limit or a visitor
    over their share gets its one-line answer now."""
    fn, names = block_fn.fn, list(block_fn.input_parameter_names or [])
    signature, marked = inspect.signature(fn), next((names.index(n) for n in MESSAGE_ON if n in names), 0)

    @functools.wraps(fn)  # the same signature, so Gradio passes the same inputs and the gr.Request
    def validate(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        request = arguments.pop("request", None)
        verdicts = [gr.validate(True, "")] * len(block_fn.inputs)  # one per input, as Gradio shows them
        try:
            if pricing.speeds is not None and runner.models is not None:  # None: a model switch under way
                price(block_fn.name, arguments, runner.models, pricing.speeds, limits.max_cost)
            address = client_address(getattr(request.client, "host", None), request.headers.get("x-forwarded-for"),
                                     limits.proxy_hops) if request is not None else None
            gate.admit(getattr(request, "session_hash", None) or "default", address, block_fn.name)
        except (InvalidRequest, Refused) as error:
            verdicts[marked] = gr.validate(False, str(error))
        return verdicts[0] if len(verdicts) == 1 else verdicts

    return validate


def price(name: str, arguments: dict, models, speeds, max_cost: float) -> None:
    """Raises InvalidRequest when the event ``name``'s request (built from its ``arguments`` by field name) is
    estimated to cost more than ``max_cost`` seconds. Input the task refuses anyway is left to the task, so that it
    comes back as the job's error like any bad input (docs/API.md); server paths are never opened here."""
    try:
        task_request, run = _task_request(name, arguments, models)
        cost = None if task_request is None else estimate(models, speeds, task_request, run=run)
    except InvalidRequest:
        return
    except Exception as error:  # noqa: BLE001 - an estimate that fails must not block a request; the task decides
        log.warning("no cost estimate for %s: %s: %s", name, type(error).__name__, error)
        return
    if cost is not None:
        check_cost(cost, max_cost)


def _task_request(name: str, arguments: dict, models) -> tuple:
    """(the task request the event ``name`` makes of ``arguments``, the saved run it continues) or (None, None)."""
    if name == "branch":
        if not arguments.get("run_file"):
            return None, None  # a run this app recorded, so within the limits already
        check_uploads(SimpleNamespace(image=arguments["run_file"]))
        keep = not isinstance(arguments.get("guidance_scale"), (int, float)) or arguments["guidance_scale"] < 0
        return (BranchRequest(step=arguments.get("step"), prompt=arguments.get("prompt") or None,
                              guidance_scale=None if keep else arguments["guidance_scale"]),
                read_run(arguments["run_file"], models))
    if name not in TASK_REQUESTS:
        return None, None
    kind = TASK_REQUESTS[name]
    fields = {f.name for f in dataclasses.fields(kind)}
    task_request = kind(**{k: uploaded_path(v) if k in ("image", "mask") else v
                           for k, v in arguments.items() if k in fields})
    check_uploads(task_request)
    return task_request, None


def _gated(fn, gate: JobGate):
    """``fn`` holding its job's ticket while it runs (a generator: until it is exhausted or closed)."""

    def session(args, kwargs) -> str:
        request = next((a for a in (*args, *kwargs.values()) if isinstance(a, gr.Request)), None)
        return getattr(request, "session_hash", None) or "default"

    def start(args, kwargs):
        try:
            return gate.start(session(args, kwargs))
        except OperatorCancelled:
            raise gr.Error("The server's operator cancelled this job before it started.", title="Cancelled",
                           print_exception=False) from None

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gated_generator(*args, **kwargs):
            ticket = start(args, kwargs)
            try:
                return (yield from fn(*args, **kwargs))
            finally:
                gate.finish(ticket)

        gated_generator.ungated = fn
        return gated_generator

    @functools.wraps(fn)
    def gated(*args, **kwargs):
        ticket = start(args, kwargs)
        try:
            return fn(*args, **kwargs)
        finally:
            gate.finish(ticket)

    gated.ungated = fn
    return gated
