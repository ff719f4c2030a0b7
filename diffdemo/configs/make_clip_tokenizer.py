"""Writes the CLIP BPE tokenizer files shipped in diffdemo/configs/clip_tokenizer/ from CLIP's own vocabulary
(``python -m diffdemo.configs.make_clip_tokenizer VOCAB.txt.gz``).

Every Stable Diffusion text encoder (SD 1.x's CLIP ViT-L, SD 2.x's and SDXL's OpenCLIP ViT-H/bigG) uses the same
49,408-token byte-level BPE; only the padding token differs, which the loader sets. The source is
``open_clip/bpe_simple_vocab_16e6.txt.gz`` from the ``open_clip_torch`` wheel on PyPI (not a dependency):

    pip download --no-deps open-clip-torch==3.3.0 -d build/ && unzip -o build/open_clip_torch-*.whl \
        open_clip/bpe_simple_vocab_16e6.txt.gz -d build/ && \
        python -m diffdemo.configs.make_clip_tokenizer build/open_clip/bpe_simple_vocab_16e6.txt.gz

The output matches the files transformers' CLIPTokenizer reads (vocab.json, merges.txt): byte symbols, the same with
``</w>`` (end of word), one token per merge, then ``<|startoftext|>`` and ``<|endoftext|>``.
"""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "diffdemo" / "configs" / "clip_tokenizer"
MERGES = 49152 - 256 - 2  # CLIP keeps this many merges: 256 byte tokens ×2, the merges and 2 specials = 49,408


def byte_symbols() -> list[str]:
    """The 256 printable characters byte-level BPE uses for the bytes 0..255, in vocabulary order (GPT-2's table):
    the printable Latin-1 bytes stand for themselves and come first; the other bytes follow in byte order, shifted
    to the code points from 256 up."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [byte for byte in range(256) if byte not in keep]
    return [chr(byte) for byte in keep] + [chr(256 + i) for i in range(len(shifted))]


def main(source: str) -> None:
    lines = gzip.open(source, "rt", encoding="utf-8").read().split("\n")
    merges = lines[1:MERGES + 1]  # line 0 is the "#version" header
    symbols = byte_symbols()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False))
    (OUT / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    print(f"{len(tokens)} tokens, {len(merges)} merges -> {OUT}")


if __name__ == "__main__":
    main(sys.argv[1])
