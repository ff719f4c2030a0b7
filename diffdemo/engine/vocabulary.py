"""What a model knows: the vocabulary file beside a model trained on captions, and the prompt words it lacks.

A model trained by diffdemo's own code saw only the captions of its world, so a word outside them ("astronaut")
is split into pieces it never learned and ignored. Its training writes ``vocabulary.json`` into the model folder:
every caption word, the subjects by family, the attribute words and the synonyms. A model without the file (any
Stable Diffusion checkpoint: CLIP has read most of the web) is taken to know every word.

Words are compared as :func:`prompt_words` cuts them: lower-case ASCII letters and digits ("T-Rex" -> t, rex).
Torch-free, so the UI may read a :class:`Vocabulary` it is handed.
"""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

VOCABULARY_FILE = "vocabulary.json"


def prompt_words(text: str) -> list[str]:
    """The words of ``text`` as the vocabulary compares them: lower case, accents dropped, split at anything that
    is not a letter or digit ("A T-Rex, on blue!" -> a, t, rex, on, blue)."""
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    return re.findall(r"[a-z0-9]+", plain)


@dataclass(frozen=True)
class Vocabulary:
    """``words``: every word the training captions contain; ``subjects``: family -> subject phrases as captions
    write them ("a panda", "grapes"); ``attributes``: e.g. colours, sizes, positions -> their words;
    ``synonyms``: word people type -> the subject it means."""

    words: frozenset[str]
    subjects: dict[str, tuple[str, ...]] = field(default_factory=dict)
    attributes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    synonyms: dict[str, str] = field(default_factory=dict)

    def unknown_words(self, text: str, also_known=()) -> list[str]:
        """The words of ``text`` the model never saw, each once, in order (``also_known``: more words to accept,
        e.g. textual-inversion trigger words)."""
        known = self.words | {w for extra in also_known for w in prompt_words(extra)}
        return list(dict.fromkeys(w for w in prompt_words(text) if w not in known))

    @property
    def subject_count(self) -> int:
        return sum(len(names) for names in self.subjects.values())

    def markdown(self) -> str:
        """The subjects by family, the attribute words and the synonyms, as Markdown tables (for the app's list
        and docs/API.md)."""
        lines = ["| subjects | count | as captions write them |", "| --- | --- | --- |"]
        lines += [f"| {family} | {len(names)} | {', '.join(names)} |" for family, names in self.subjects.items()]
        lines += ["", "| attribute | words |", "| --- | --- |"]
        lines += [f"| {name} | {', '.join(words)} |" for name, words in self.attributes.items()]
        if self.synonyms:
            pairs = ", ".join(f"{word} ({meaning})" for word, meaning in sorted(self.synonyms.items()))
            lines += ["", f"Synonyms it also knows: {pairs}."]
        return "\n".join(lines)


def read_vocabulary(folder: str | Path) -> Vocabulary | None:
    """The vocabulary in ``folder/vocabulary.json``, or None when the folder has none. Raises ValueError for a file
    that is not a vocabulary."""
    path = Path(folder) / VOCABULARY_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Vocabulary(words=frozenset(data["words"]),
                          subjects={k: tuple(v) for k, v in data.get("subjects", {}).items()},
                          attributes={k: tuple(v) for k, v in data.get("attributes", {}).items()},
                          synonyms=dict(data.get("synonyms", {})))
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{path} is not a vocabulary file ({type(error).__name__}: {error})") from None


def write_vocabulary(folder: str | Path, vocabulary: Vocabulary, about: str = "") -> Path:
    """Writes ``folder/vocabulary.json`` (words normalised by :func:`prompt_words`, sorted); returns its path."""
    words = sorted({w for phrase in vocabulary.words for w in prompt_words(phrase)})
    data = {"about": about or "The words of the captions this model was trained on (diffdemo/engine/vocabulary.py).",
            "words": words, "subjects": {k: list(v) for k, v in vocabulary.subjects.items()},
            "attributes": {k: list(v) for k, v in vocabulary.attributes.items()},
            "synonyms": dict(sorted(vocabulary.synonyms.items()))}
    path = Path(folder) / VOCABULARY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
