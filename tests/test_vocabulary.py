"""What a model knows: the vocabulary file, the unknown words a text-to-image result reports, and how the page and
docs/API.md show them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from diffdemo.engine.vocabulary import VOCABULARY_FILE, Vocabulary, prompt_words, read_vocabulary, write_vocabulary
from diffdemo.tasks import TextToImageRequest, text_to_image
from diffdemo.world.vocabulary import DOCS_END, DOCS_START, docs_section, grammar_vocabulary

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(steps=1, seed=1)


def test_prompt_words_are_lower_case_ascii_letters_and_digits():
    assert prompt_words("A T-Rex, on BLUE!  piñata 8 ball") == ["a", "t", "rex", "on", "blue", "pinata", "8", "ball"]


def test_unknown_words_are_listed_once_in_order():
    vocabulary = Vocabulary(words=frozenset({"a", "red", "circle", "on"}))
    assert vocabulary.unknown_words("a red astronaut on a horse, an astronaut") == ["astronaut", "horse", "an"]
    assert vocabulary.unknown_words("a red circle") == []
    assert vocabulary.unknown_words("a red <custom-token>", also_known=["<custom-token>"]) == []


def test_a_vocabulary_file_round_trips(tmp_path):
    written = grammar_vocabulary(with_emoji=True)
    path = write_vocabulary(tmp_path, written)
    assert path == tmp_path / VOCABULARY_FILE
    read = read_vocabulary(tmp_path)
    assert read.words == {w for phrase in written.words for w in prompt_words(phrase)}
    assert read.subjects == written.subjects and read.synonyms == written.synonyms
    assert read.subject_count >= 300 and "a panda" in read.subjects["animals"]
    assert read_vocabulary(tmp_path / "elsewhere") is None


def test_the_shipped_vocabulary_is_the_shapes_grammar():
    shipped = read_vocabulary(ROOT / "assets" / "model")
    assert shipped == read_vocabulary_of(grammar_vocabulary())
    assert shipped.subjects == {"shapes": ("a circle", "a square", "a triangle", "a star", "a heart")}


def read_vocabulary_of(vocabulary: Vocabulary) -> Vocabulary:
    """``vocabulary`` as it reads back from a file (words normalised)."""
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        write_vocabulary(folder, vocabulary)
        return read_vocabulary(folder)


@pytest.fixture(scope="module")
def tiny_folder_with_vocabulary(tiny_model_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("with_vocabulary") / "model"
    shutil.copytree(tiny_model_dir, folder)
    write_vocabulary(folder, grammar_vocabulary())
    return folder


def test_a_model_with_a_vocabulary_reports_the_prompts_unknown_words(tiny_folder_with_vocabulary):
    from diffdemo.engine import load_models

    models = load_models(str(tiny_folder_with_vocabulary), device="cpu")
    assert models.vocabulary is not None
    result = text_to_image(models, TextToImageRequest("A red Astronaut riding a horse", **FAST))
    assert result.metadata["unknown_words"] == ["astronaut", "riding", "horse"]
    known = text_to_image(models, TextToImageRequest("a big red circle on a blue background", **FAST))
    assert known.metadata["unknown_words"] == []


def test_a_model_without_a_vocabulary_knows_every_word(tiny_models):
    assert tiny_models.vocabulary is None
    result = text_to_image(tiny_models, TextToImageRequest("an astronaut riding a horse", **FAST))
    assert "unknown_words" not in result.metadata


def test_a_broken_vocabulary_file_is_one_clear_error(tiny_model_dir, tmp_path):
    from diffdemo.engine import ModelLoadError, load_models

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / VOCABULARY_FILE).write_text(json.dumps({"subjects": []}))
    with pytest.raises(ModelLoadError, match="vocabulary"):
        load_models(str(folder), device="cpu")


def test_the_built_in_model_says_what_it_does_not_know(embedded_models):
    result = text_to_image(embedded_models, TextToImageRequest("a red cat in the top left corner", **FAST))
    assert result.metadata["unknown_words"] == ["cat"]


def test_the_page_notes_unknown_words_next_to_the_result():
    from diffdemo.ui.text_to_image_tab import unknown_words_note

    note = unknown_words_note({"unknown_words": ["astronaut", "horse"]})
    assert "unknown words: astronaut, horse" in note.value and note.visible
    assert not unknown_words_note({"unknown_words": []}).visible
    assert not unknown_words_note({"seed": 1}).visible  # a model without a vocabulary
    assert not unknown_words_note(None).visible


def test_the_page_lists_what_the_model_knows_and_only_examples_it_knows(live_app):
    from diffdemo.ui.text_to_image_tab import EMOJI_EXAMPLES, EXAMPLES, known_examples

    shapes = read_vocabulary(ROOT / "assets" / "model")
    assert known_examples(shapes) == EXAMPLES  # the emoji examples wait for a model that knows emoji
    assert known_examples(grammar_vocabulary(with_emoji=True)) == EXAMPLES + EMOJI_EXAMPLES
    assert known_examples(None) == EXAMPLES + EMOJI_EXAMPLES
    components = live_app.demo.config["components"]
    labels = [c["props"].get("label") for c in components]
    assert "What this model knows: 5 subjects" in labels
    subjects = next(c for c in components if c["props"].get("label") == "Find a subject")
    assert [choice[0] for choice in subjects["props"]["choices"]] == sorted(shapes.subjects["shapes"])
    assert any(c["props"].get("elem_id") == "unknown-words" for c in components)


def test_the_api_docs_list_what_the_built_in_model_knows():
    page = (ROOT / "docs" / "API.md").read_text(encoding="utf-8")
    start, end = page.index(DOCS_START), page.index(DOCS_END) + len(DOCS_END)
    expected = docs_section(read_vocabulary(ROOT / "assets" / "model"))
    assert page[start:end] == expected, "run: python -m diffdemo.world.vocabulary assets/model --docs docs/API.md"
