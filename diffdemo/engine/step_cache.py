"""DeepCache-style step caching (Ma et al. 2024): a U-Net wrapper whose deep part runs only every N-th step of a run.

One of the opt-in speed-ups of :mod:`diffdemo.engine.fast` (``--fast step_cache=N``); off by default, and it
changes the picture a little (tests/test_fast_path.py measures how much).
"""
from __future__ import annotations

import torch


class StepCachedUNet:
    """A UNet2DConditionModel whose deep part runs only every ``interval``-th step of a run (DeepCache).

    Adjacent steps change the U-Net's low-resolution features little, so the input of the last (outermost) up block
    is cached on a full step and reused by the next ``interval − 1`` steps, which run only ``conv_in``, the first
    down block, the last up block and the output layers. ``guided`` asks :meth:`new_run` for a per-run model, so
    no run ever sees another's features; calling this object directly always runs the whole U-Net. Other
    attributes (``config``, ``dtype``, ``device`` …) are the wrapped U-Net's.
    """

    def __init__(self, unet, interval: int, compile_kwargs: dict | None = None):
        check_step_cache_support(unet)
        self.base, self.interval = unet, interval
        self.full, self.partial = self._full, self._partial
        if compile_kwargs is not None:
            from diffdemo.engine.fast import configure_inductor  # here: fast.py imports this module

            configure_inductor()
            self.full, self.partial = (torch.compile(f, **compile_kwargs) for f in (self._full, self._partial))

    def __getattr__(self, name):
        if name == "base":  # not set yet (during construction): no recursion
            raise AttributeError(name)
        return getattr(self.base, name)

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels=None, return_dict=True):
        return _output(self.full(sample, timestep, encoder_hidden_states, class_labels)[0], return_dict)

    def new_run(self) -> CachedRun:
        return CachedRun(self)

    def _embed(self, sample, timestep, encoder_hidden_states, class_labels):
        """Mirrors the start of ``UNet2DConditionModel.forward``: time (+ class) embedding ``B×E``, conv_in."""
        unet = self.base
        if unet.config.center_input_sample:
            sample = 2 * sample - 1.0
        emb = unet.time_embedding(unet.get_time_embed(sample=sample, timestep=timestep), None)
        class_emb = unet.get_class_embed(sample=sample, class_labels=class_labels)
        if class_emb is not None:
            emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
        if unet.time_embed_act is not None:
            emb = unet.time_embed_act(emb)
        return unet.conv_in(sample), emb

    def _full(self, sample, timestep, encoder_hidden_states, class_labels=None):
        """The whole U-Net, block by block as diffusers runs it; returns (output, input of the last up block)."""
        unet = self.base
        hidden, emb = self._embed(sample, timestep, encoder_hidden_states, class_labels)
        skips = (hidden,)
        for block in unet.down_blocks:
            hidden, res = _run_block(block, encoder_hidden_states, hidden_states=hidden, temb=emb)
            skips += res
        if unet.mid_block is not None:
            if getattr(unet.mid_block, "has_cross_attention", False):
                hidden = unet.mid_block(hidden, emb, encoder_hidden_states=encoder_hidden_states)
            else:
                hidden = unet.mid_block(hidden, emb)
        # like diffusers: pass the skip's size to the upsamplers when the latent is not a multiple of 2**levels
        forward_size = any(side % 2 ** unet.num_upsamplers for side in sample.shape[-2:])
        upsample_size = None
        for block in unet.up_blocks[:-1]:
            res, skips = skips[-len(block.resnets):], skips[:-len(block.resnets)]
            upsample_size = skips[-1].shape[2:] if forward_size else upsample_size
            hidden = _run_block(block, encoder_hidden_states, hidden_states=hidden, temb=emb,
                                res_hidden_states_tuple=res, upsample_size=upsample_size)
        return self._last(hidden, skips, emb, encoder_hidden_states), hidden

    def _partial(self, sample, timestep, encoder_hidden_states, class_labels, feature):
        """Only the outermost level: conv_in, the first down block, then the last up block on ``feature``."""
        hidden, emb = self._embed(sample, timestep, encoder_hidden_states, class_labels)
        _, res = _run_block(self.base.down_blocks[0], encoder_hidden_states, hidden_states=hidden, temb=emb)
        skips = ((hidden,) + res)[:len(self.base.up_blocks[-1].resnets)]  # the first down block's downsample is unused
        return self._last(feature, skips, emb, encoder_hidden_states)

    def _last(self, hidden, skips, emb, encoder_hidden_states):
        unet = self.base
        hidden = _run_block(unet.up_blocks[-1], encoder_hidden_states, hidden_states=hidden, temb=emb,
                            res_hidden_states_tuple=skips, upsample_size=None)
        if unet.conv_norm_out is not None:
            hidden = unet.conv_act(unet.conv_norm_out(hidden))
        return unet.conv_out(hidden)


class CachedRun:
    """The model of one run: call ``k`` (0-based) runs the whole U-Net when ``k % interval == 0`` (or when the input
    shape changed), else only the outermost level on the features cached by the last full call."""

    def __init__(self, owner: StepCachedUNet):
        self.owner, self.calls, self.full_calls = owner, 0, 0
        self.feature, self.key = None, None

    def __call__(self, sample, timestep, encoder_hidden_states, class_labels=None, return_dict=True):
        key = (tuple(sample.shape), sample.dtype, sample.device)
        if self.feature is not None and key == self.key and self.calls % self.owner.interval:
            out = self.owner.partial(sample, timestep, encoder_hidden_states, class_labels, self.feature)
        else:
            out, feature = self.owner.full(sample, timestep, encoder_hidden_states, class_labels)
            self.feature, self.key = feature.clone(), key  # a copy: CUDA-graph outputs are reused by the next replay
            self.full_calls += 1
        self.calls += 1
        return _output(out, return_dict)


def _run_block(block, encoder_hidden_states, **kwargs):
    if getattr(block, "has_cross_attention", False):
        kwargs["encoder_hidden_states"] = encoder_hidden_states
    return block(**kwargs)


def _output(sample, return_dict: bool):
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionOutput

    return UNet2DConditionOutput(sample=sample) if return_dict else (sample,)


def check_step_cache_support(unet) -> None:
    """Step caching covers the Stable Diffusion 1/2 U-Net layout; raises ValueError naming what is not covered."""
    from diffusers import UNet2DConditionModel

    if not isinstance(unet, UNet2DConditionModel):
        raise ValueError(f"Step caching supports diffusers' UNet2DConditionModel; got {type(unet).__name__}.")
    extra = [name for name in ("addition_embed_type", "time_cond_proj_dim", "encoder_hid_dim_type")
             if getattr(unet.config, name, None) is not None]
    if extra:
        raise ValueError(f"Step caching supports Stable-Diffusion-layout U-Nets without extra conditioning; this "
                         f"one has {', '.join(extra)}.")
    if len(unet.down_blocks[0].resnets) + 1 != len(unet.up_blocks[-1].resnets):
        raise ValueError("Step caching needs the last up block to take the first down block's skips; this U-Net "
                         "is laid out differently.")
