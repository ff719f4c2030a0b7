"""The emoji subjects: the committed table (``subjects.json``), the synonyms people type, and articles.

``subjects.json`` is written by ``python -m diffdemo.world.emoji.make_subjects`` from Unicode's
``emoji-test.txt``; it lists, per subject, its caption name (the CLDR short name in lower-case ASCII: "panda",
"red apple", "t-rex"), the glyph (``char``, ``codepoints``: the tile's file name), its family, and the position
and background it is never rendered with in training (held out). docs/EMOJI.md is the same table for people.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TABLE = Path(__file__).with_name("subjects.json")

# Words people type where the CLDR name is stilted or has a common variant -> the subject they mean. Captions use
# them too (see ``scene.caption_for``), so a model trained on them knows both. No key is a subject name or a word
# of the shapes grammar (a colour, size or position): "orange" stays a colour, so there is no "an orange" here.
SYNONYMS: dict[str, str] = {
    "car": "automobile", "auto": "automobile", "donut": "doughnut", "bike": "bicycle", "motorbike": "motorcycle",
    "plane": "airplane", "aeroplane": "airplane", "ufo": "flying saucer", "train": "locomotive",
    "subway": "metro", "fire truck": "fire engine", "truck": "delivery truck", "lorry": "delivery truck",
    "boat": "motor boat", "cab": "taxi", "puppy": "dog", "kitten": "cat", "bunny": "rabbit", "bee": "honeybee",
    "ladybug": "lady beetle", "ladybird": "lady beetle", "hippo": "hippopotamus", "rhino": "rhinoceros",
    "tyrannosaurus": "t-rex", "dinosaur": "sauropod", "apple": "red apple", "kiwi": "kiwi fruit",
    "corn": "ear of corn", "chili": "hot pepper", "chilli": "hot pepper", "aubergine": "eggplant",
    "fries": "french fries", "chips": "french fries", "burger": "hamburger", "cheese": "cheese wedge",
    "drumstick": "poultry leg", "salad": "green salad", "noodles": "steaming bowl",
    "ramen": "steaming bowl", "rice": "cooked rice", "ice cream cone": "soft ice cream", "cake": "birthday cake",
    "coffee": "hot beverage", "tea": "hot beverage", "milk": "glass of milk", "beer": "beer mug",
    "cocktail": "cocktail glass", "flower": "blossom", "tree": "deciduous tree", "clover": "four leaf clover",
    "leaf": "maple leaf", "moon": "crescent moon", "planet": "ringed planet", "saturn": "ringed planet",
    "earth": "globe", "globe showing europe-africa": "globe", "lightning": "high voltage",
    "flame": "fire", "raindrop": "droplet", "wave": "water wave", "phone": "mobile phone",
    "smartphone": "mobile phone", "tv": "television", "computer": "desktop computer", "lightbulb": "light bulb",
    "clock": "alarm clock", "hourglass done": "hourglass", "lock": "padlock",
    "book": "closed book", "gift": "wrapped gift", "present": "wrapped gift", "die": "game die", "dice": "game die",
    "teddy": "teddy bear", "piano": "musical keyboard", "sax": "saxophone", "mic": "microphone",
    "headphones": "headphone", "tie": "necktie", "tshirt": "t-shirt", "shoe": "running shoe",
    "sneaker": "running shoe", "boot": "hiking boot", "hat": "top hat", "cap": "billed cap", "diamond": "gem stone",
    "football": "soccer ball", "tennis": "tennis ball", "eight ball": "pool 8 ball", "gold medal": "1st place medal",
    "medal": "sports medal", "pumpkin": "jack-o-lantern", "smiley": "grinning face", "poop": "pile of poo",
    "skeleton": "skull",
}
# Spellings read without an article (plurals, mass nouns, games: "grapes", "popcorn", "bowling") or with "the".
ARTICLES: dict[str, str] = {
    **dict.fromkeys((
        "grapes", "cherries", "blueberries", "pancakes", "french fries", "fries", "chips", "bacon", "popcorn",
        "cooked rice", "rice", "spaghetti", "sushi", "bread", "noodles", "ramen", "coffee", "tea", "milk", "beer",
        "corn", "cheese", "scissors", "books", "glasses", "sunglasses", "jeans", "gloves", "socks", "maracas",
        "musical notes", "headphones", "skis", "nesting dolls", "fireworks", "dice", "tennis", "bowling",
        "ping pong", "badminton", "ice hockey", "camping", "high voltage", "lightning", "soap", "poop",
        "mount fuji"), ""),
    "milky way": "the", "statue of liberty": "the", "tokyo tower": "the",
}

_AN_BEFORE = ("hour", "honest", "heir", "x-", "8")  # silent h, letters and digits read with a vowel
_A_BEFORE = ("uni", "use", "usu", "eu", "one", "once", "ufo")  # vowel letters read "you"/"won"


def article(phrase: str) -> str:
    """ "a" or "an" for the English ``phrase`` ("an automobile", "a unicorn", "an hourglass done")."""
    word = phrase.split()[0].lower()
    if word.startswith(_AN_BEFORE):
        return "an"
    if word.startswith(_A_BEFORE):
        return "a"
    return "an" if word[0] in "aeiou" else "a"


def with_article(spelling: str, words: str | None = None) -> str:
    """``words`` (default: ``spelling``) with the article ``spelling`` takes: "an owl", "a small owl", "grapes",
    "small grapes", "the milky way"."""
    words = words or spelling
    chosen = ARTICLES.get(spelling)
    chosen = article(words) if chosen is None else chosen
    return f"{chosen} {words}" if chosen else words


@dataclass(frozen=True)
class Subject:
    """One emoji subject; ``name`` is how captions write it."""

    name: str
    char: str
    codepoints: str  # e.g. "1f43c" or "1f408-200d-2b1b": the glyph tile's file stem
    family: str
    held_out_position: str
    held_out_background: str

    @property
    def spellings(self) -> tuple[str, ...]:
        """The CLDR name first, then the synonyms that mean this subject."""
        return (self.name, *sorted(word for word, name in SYNONYMS.items() if name == self.name))


@lru_cache(maxsize=1)
def subjects() -> tuple[Subject, ...]:
    """Every subject, in the table's order (family by family)."""
    rows = json.loads(TABLE.read_text(encoding="utf-8"))["subjects"]
    return tuple(Subject(r["name"], r["char"], r["codepoints"], r["family"], r["held_out_position"],
                         r["held_out_background"]) for r in rows)


@lru_cache(maxsize=1)
def by_name() -> dict[str, Subject]:
    return {s.name: s for s in subjects()}


def families() -> dict[str, tuple[str, ...]]:
    """family -> subject names, in the table's order."""
    grouped: dict[str, list[str]] = {}
    for s in subjects():
        grouped.setdefault(s.family, []).append(s.name)
    return {family: tuple(names) for family, names in grouped.items()}
