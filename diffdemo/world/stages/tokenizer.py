"""Stage ``tokenizer``: a BPE vocabulary of the caption language -> ``out/model/tokenizer``, and the words the
model will know -> ``out/model/vocabulary.json`` (the app reports prompt words outside it)."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from diffdemo.world.scene import sample_scene
from diffdemo.world.training import TrainConfig, init_folder

EMOJI_VOCAB_SIZE = 4096  # a cap: with the emoji captions BPE runs out of merges at ~1,800, every word one token


def run(cfg: TrainConfig, out: Path, device) -> dict:
    from transformers import CLIPTokenizer

    from diffdemo.engine.vocabulary import write_vocabulary
    from diffdemo.world.vocabulary import model_vocabulary

    folder = out / "model" / "tokenizer"
    write_vocabulary(out / "model", model_vocabulary(cfg))
    init = init_folder(cfg, "model", "tokenizer")
    if init is not None:  # a fine-tune keeps the token ids its text encoder was trained on
        shutil.copytree(init, folder, dirs_exist_ok=True)
        return {"vocab_size": len(CLIPTokenizer.from_pretrained(folder)), "copied_from": str(init)}
    rng = random.Random(cfg.seed)
    captions = [sample_scene(rng, mention_prob=0.7).caption for _ in range(20000)]
    if cfg.emoji_share > 0:  # from a generator of their own, so the shapes captions above stay as they were
        from diffdemo.world.emoji.scene import emoji_captions

        captions += emoji_captions(random.Random(cfg.seed + 20), 20000)
    tokenizer = CLIPTokenizer().train_new_from_iterator(captions, vocab_size=EMOJI_VOCAB_SIZE if cfg.emoji_share
                                                        else 1000)
    tokenizer.model_max_length = cfg.max_text_tokens
    tokenizer.save_pretrained(folder)
    canonical_token_ids(folder / "tokenizer.json")
    return {"vocab_size": len(CLIPTokenizer.from_pretrained(folder))}


def canonical_token_ids(path: Path) -> None:
    """Renumbers a trained BPE vocabulary deterministically (the trainer's order of single tokens varies per run).

    Special tokens keep their ids; then come the unmerged tokens sorted by text, then merged ones in merge order.
    """
    data = json.loads(path.read_text())
    vocab, merges = data["model"]["vocab"], data["model"]["merges"]
    merged = list(dict.fromkeys("".join(m) if isinstance(m, list) else m.replace(" ", "") for m in merges))
    specials = [t["content"] for t in sorted(data["added_tokens"], key=lambda t: t["id"])]
    assert [vocab[t] for t in specials] == list(range(len(specials))), "special tokens must come first"
    singles = sorted(t for t in vocab if t not in set(merged) and t not in specials)
    data["model"]["vocab"] = {token: i for i, token in enumerate(specials + singles + merged)}
    path.write_text(json.dumps(data, ensure_ascii=False))
