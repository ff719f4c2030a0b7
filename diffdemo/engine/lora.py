"""LoRAs and textual-inversion embeddings, through diffusers' loaders (``load_lora_weights`` with peft adapters,
``load_textual_inversion``).

Two ways to use a LoRA, as in AUTOMATIC1111: ``--lora FILE[:WEIGHT]`` (on for every request at that weight) and
``<lora:NAME:WEIGHT>`` in a prompt (NAME is a file in ``--lora-dir``, loaded the first time it is named; on for that
request). Each LoRA is one peft adapter on the shared U-Net and text encoder(s); before a prompt is encoded the
adapters it asks for are set to their weights and the others switched off, so a request never sees another's.
An adapter at weight 0 is switched off, which leaves the modules computing exactly what they did without it.
The PNG infotext records the LoRAs used as A1111 does: ``Lora hashes: "name: <first 12 hex of its hash>"``.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

LORA_TAG = re.compile(r"<lora:([^:<>]+)(?::([^:<>]*))?(?::[^<>]*)?>")
LORA_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".bin")
MAX_WEIGHT = 10.0


class LoraError(ValueError):
    """A LoRA the prompt or command line names cannot be used; the message says why in one sentence."""


@dataclass(frozen=True)
class UsedLora:
    name: str  # as named in the prompt (or the file's stem for --lora)
    weight: float
    short_hash: str  # A1111's: the first 12 hex digits of the file's hash (see file_hash)


def parse_lora_option(text: str) -> tuple[Path, float]:
    """``"FILE[:WEIGHT]"`` (``--lora``) -> (path, weight); the weight defaults to 1."""
    path, sep, weight = text.rpartition(":")
    if sep and path and _is_number(weight):
        return Path(path).expanduser(), float(weight)
    return Path(text).expanduser(), 1.0


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def file_hash(path: Path) -> str:
    """sha256 hex digest as A1111 computes it for LoRAs: of the tensor data after a .safetensors header (the
    "addnet" hash, unchanged by metadata edits), of the whole file otherwise."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        if path.suffix == ".safetensors":
            header = int.from_bytes(stream.read(8), "little")
            stream.seek(8 + header)
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def split_prompt(prompt: str) -> tuple[str, dict[str, float]]:
    """``"a cat <lora:ink:0.8>"`` -> (``"a cat"``, ``{"ink": 0.8}``); a tag without weight means 1."""
    wanted: dict[str, float] = {}
    for name, weight in LORA_TAG.findall(prompt):
        if weight and not _is_number(weight):
            raise LoraError(f"The weight in <lora:{name}:{weight}> is not a number; write e.g. <lora:{name}:0.8>.")
        value = float(weight) if weight else 1.0
        if not -MAX_WEIGHT <= value <= MAX_WEIGHT:
            raise LoraError(f"The weight of LoRA '{name}' must be between -{MAX_WEIGHT:g} and {MAX_WEIGHT:g}; got "
                            f"{value:g}.")
        wanted[name.strip()] = value
    return " ".join(LORA_TAG.sub(" ", prompt).split()), wanted


@dataclass
class LoraLibrary:
    """The LoRAs of one model set: fixed ones (``--lora``) and those found by name in ``directory``."""

    pipeline: object  # a diffusers pipeline sharing the model set's modules (its loaders do the work)
    directory: Path | None = None
    fixed: dict[str, float] = field(default_factory=dict)  # adapter name -> weight for every request
    loaded: dict[str, Path] = field(default_factory=dict)  # adapter name -> file
    hashes: dict[str, str] = field(default_factory=dict)
    active: tuple = ()  # what the modules are set to now: ((name, weight), ...)

    def add(self, path: Path, weight: float | None = None, name: str | None = None) -> str:
        """Loads ``path`` as an adapter (once); with ``weight`` it is on for every request."""
        name = name or path.stem
        if name not in self.loaded:
            if not path.is_file():
                raise LoraError(f"The LoRA file {path} does not exist.")
            self._load(path, name)
        if weight is not None:
            self.fixed[name] = weight
        return name

    def _load(self, path: Path, name: str) -> None:
        try:
            self.pipeline.load_lora_weights(str(path), adapter_name=_adapter_name(name))
        except ImportError as error:
            raise LoraError("LoRAs need the peft package: pip install peft.") from error
        except (ValueError, KeyError, RuntimeError, OSError) as error:
            raise LoraError(f"The LoRA {path} does not fit this model ({reason(error)}).") from None
        self.loaded[name] = path
        self.hashes[name] = file_hash(path)[:12]
        self.active = None  # the new adapter is on at weight 1 until the next activate()

    def find(self, name: str) -> Path:
        if self.directory is None:
            raise LoraError(f"The prompt names the LoRA '{name}', but no LoRA folder was given (start the app with "
                            f"--lora-dir FOLDER).")
        matches = [self.directory / f"{name}{suffix}" for suffix in LORA_SUFFIXES]
        found = next((p for p in matches if p.is_file() and p.resolve().is_relative_to(self.directory.resolve())),
                     None)
        if found is None:
            known = ", ".join(sorted(p.stem for p in self.directory.glob("*") if p.suffix in LORA_SUFFIXES)[:10])
            raise LoraError(f"There is no LoRA named '{name}' in {self.directory} (found: {known or 'none'}).")
        return found

    def activate(self, wanted: dict[str, float]) -> list[UsedLora]:
        """Sets the adapters to ``fixed`` updated by ``wanted`` (prompt tags) and switches the rest off; returns
        the LoRAs in use (weight ≠ 0) for the infotext."""
        for name in wanted:
            if name not in self.loaded:
                self.add(self.find(name), name=name)
        weights = {**self.fixed, **wanted}
        used = tuple((name, weight) for name, weight in weights.items() if weight != 0)
        if used != self.active:
            if used:
                self.pipeline.enable_lora()
                self.pipeline.set_adapters([_adapter_name(n) for n, _ in used], [w for _, w in used])
            else:
                self.pipeline.disable_lora()
            self.active = used
        return [UsedLora(name, weight, self.hashes[name]) for name, weight in used]


def reason(error: BaseException) -> str:
    from diffdemo.engine.loading import reason as first_clause

    return first_clause(error, 160)


def _adapter_name(name: str) -> str:
    """peft adapter names become module attribute names: no dots."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


def lora_infotext(used: list[UsedLora]) -> dict:
    """The ``Lora hashes`` field of A1111's infotext (quoted as A1111 quotes values with ',' or ':')."""
    if not used:
        return {}
    return {"Lora hashes": json.dumps(", ".join(f"{u.name}: {u.short_hash}" for u in used), ensure_ascii=False)}


def load_embedding(pipeline, path: Path, token: str | None = None) -> str:
    """Loads a textual-inversion embedding (A1111 ``.pt``/``.safetensors`` or diffusers ``learned_embeds``); its
    trigger word is ``token`` or the file's stem, as in A1111. SDXL files hold one vector set per encoder."""
    token = token or path.stem
    if not path.is_file():
        raise LoraError(f"The embedding file {path} does not exist.")
    try:
        if getattr(pipeline, "text_encoder_2", None) is not None:
            _load_sdxl_embedding(pipeline, path, token)
        else:
            pipeline.load_textual_inversion(str(path), token=token)
    except (ValueError, KeyError, RuntimeError, OSError) as error:
        raise LoraError(f"The embedding {path} does not fit this model ({reason(error)}).") from None
    return token


def _load_sdxl_embedding(pipeline, path: Path, token: str) -> None:
    from diffdemo.engine.single_file import read_state_dict

    state = read_state_dict(path)
    if not {"clip_l", "clip_g"} <= state.keys():
        raise ValueError("an SDXL embedding holds clip_l and clip_g vectors")
    pipeline.load_textual_inversion(state["clip_l"], token=token, text_encoder=pipeline.text_encoder,
                                    tokenizer=pipeline.tokenizer)
    pipeline.load_textual_inversion(state["clip_g"], token=token, text_encoder=pipeline.text_encoder_2,
                                    tokenizer=pipeline.tokenizer_2)


def attach_networks(models, loras=(), lora_dir=None, embeddings=()) -> None:
    """Loads ``--lora FILE[:WEIGHT]`` options, ``--embedding FILE`` ones and sets up ``--lora-dir`` for prompt tags
    on ``models`` (kept in ``models.extras["loras"]``). Raises LoraError."""
    pipeline = models.pipeline()
    if lora_dir is not None and not Path(lora_dir).is_dir():
        raise LoraError(f"The LoRA folder {lora_dir} does not exist.")
    for path in embeddings:
        load_embedding(pipeline, Path(path).expanduser())
    if not loras and lora_dir is None:
        return
    library = LoraLibrary(pipeline, Path(lora_dir).expanduser() if lora_dir else None)
    for option in loras:
        path, weight = parse_lora_option(option) if isinstance(option, str) else option
        library.add(path, weight)
    library.activate({})
    models.extras["loras"] = library
