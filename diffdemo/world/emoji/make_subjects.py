"""Writes the emoji subject table, ``diffdemo/world/emoji/subjects.json``, and its page, docs/EMOJI.md.

The table is committed so that training, the checker and the app need no emoji package at run time: each subject
is one Noto Color Emoji glyph, named by its CLDR short name as Unicode's ``emoji-test.txt`` lists it (the same
names as the ``emoji`` package on PyPI), with its family and the two combinations training never renders (one
position, one background). The choice of subjects is the lists below, by hand: broad families a visitor guesses
("a cat", "a rocket", "a pizza"), without flags, keycaps, skin tones, symbols or near-duplicates that no one could
tell apart at 30 pixels (moon phases, clock faces, "oncoming" views, the emotive cat faces).

    python -m diffdemo.world.emoji.make_subjects [--emoji-test FILE] [--tiles DIR]

``emoji-test.txt`` comes from Debian's ``unicode-data`` package (fetched with ``apt-get download``, as
:mod:`diffdemo.world.data` does, unless ``--emoji-test`` names it). ``--tiles`` (default: the fetched glyph tiles
of ``python -m diffdemo.world.data fetch``) checks that every subject has a glyph.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import tempfile
import unicodedata
from pathlib import Path

from diffdemo.world.emoji.subjects import SYNONYMS, TABLE, with_article
from diffdemo.world.scene import COLOURS, POSITIONS

ROOT = Path(__file__).resolve().parents[3]

DOC = ROOT / "docs" / "EMOJI.md"
UNICODE_DATA = "unicode-data"
EMOJI_TEST = "usr/share/unicode/emoji/emoji-test.txt"

# family -> CLDR short names, as emoji-test.txt spells them
CHOSEN: dict[str, tuple[str, ...]] = {
    "animals": (
        "monkey", "gorilla", "dog", "wolf", "fox", "cat", "black cat", "lion", "tiger", "horse", "unicorn", "zebra",
        "deer", "ox", "cow", "pig", "goat", "camel", "llama", "giraffe", "elephant", "rhinoceros", "hippopotamus",
        "mouse", "rat", "hamster", "rabbit", "hedgehog", "bat", "bear", "polar bear", "koala", "panda", "sloth",
        "otter", "skunk", "kangaroo", "turkey", "chicken", "baby chick", "bird", "penguin", "dove", "eagle", "duck",
        "swan", "owl", "flamingo", "peacock", "parrot", "frog", "crocodile", "turtle", "lizard", "snake", "dragon",
        "sauropod", "T-Rex", "whale", "dolphin", "fish", "tropical fish", "shark", "octopus", "spiral shell",
        "jellyfish", "crab", "lobster", "shrimp", "snail", "butterfly", "bug", "ant", "honeybee", "lady beetle",
        "spider", "scorpion"),
    "animal faces": (
        "monkey face", "dog face", "cat face", "tiger face", "horse face", "cow face", "pig face", "mouse face",
        "rabbit face", "dragon face"),
    "plants and flowers": (
        "bouquet", "cherry blossom", "lotus", "rose", "wilted flower", "hibiscus", "sunflower", "blossom", "tulip",
        "hyacinth", "seedling", "potted plant", "evergreen tree", "deciduous tree", "palm tree", "cactus",
        "sheaf of rice", "herb", "shamrock", "four leaf clover", "maple leaf", "fallen leaf", "mushroom",
        "nest with eggs"),
    "fruit and vegetables": (
        "grapes", "melon", "watermelon", "tangerine", "lemon", "banana", "pineapple", "mango", "red apple",
        "green apple", "pear", "peach", "cherries", "strawberry", "blueberries", "kiwi fruit", "tomato", "coconut",
        "avocado", "eggplant", "potato", "carrot", "ear of corn", "hot pepper", "bell pepper", "cucumber",
        "broccoli", "garlic", "onion"),
    "food and drink": (
        "bread", "croissant", "baguette bread", "pretzel", "bagel", "pancakes", "waffle", "cheese wedge",
        "meat on bone", "poultry leg", "bacon", "hamburger", "french fries", "pizza", "hot dog", "sandwich", "taco",
        "burrito", "egg", "cooking", "green salad", "popcorn", "rice ball", "cooked rice", "steaming bowl",
        "spaghetti", "sushi", "dumpling", "soft ice cream", "ice cream", "doughnut", "cookie", "birthday cake",
        "shortcake", "cupcake", "pie", "chocolate bar", "candy", "lollipop", "honey pot", "baby bottle",
        "glass of milk", "hot beverage", "teapot", "wine glass", "cocktail glass", "tropical drink", "beer mug",
        "cup with straw"),
    "vehicles": (
        "locomotive", "railway car", "bullet train", "metro", "tram", "monorail", "bus", "ambulance", "fire engine",
        "police car", "taxi", "automobile", "sport utility vehicle", "pickup truck", "delivery truck", "tractor",
        "racing car", "motorcycle", "motor scooter", "bicycle", "kick scooter", "skateboard", "roller skate",
        "sailboat", "speedboat", "passenger ship", "motor boat", "ship", "airplane", "parachute", "helicopter",
        "satellite", "rocket", "flying saucer"),
    "sky and weather": (
        "crescent moon", "full moon", "full moon face", "sun with face", "sun", "ringed planet",
        "globe showing Europe-Africa", "shooting star", "milky way", "cloud", "sun behind cloud", "cloud with rain",
        "cloud with snow", "cloud with lightning", "tornado", "cyclone", "rainbow", "umbrella", "closed umbrella",
        "high voltage", "snowflake", "snowman", "comet", "fire", "droplet", "water wave"),
    "buildings and places": (
        "house", "house with garden", "hut", "office building", "hospital", "school", "factory", "castle",
        "Japanese castle", "stadium", "classical building", "Tokyo tower", "Statue of Liberty", "church", "mosque",
        "synagogue", "fountain", "tent", "circus tent", "ferris wheel", "roller coaster", "carousel horse",
        "cityscape", "sunrise over mountains", "sunset", "night with stars", "bridge at night", "snow-capped mountain",
        "volcano", "mount fuji", "camping", "beach with umbrella", "desert", "desert island", "moai", "brick",
        "rock"),
    "household objects": (
        "door", "window", "bed", "couch and lamp", "chair", "toilet", "bathtub", "broom", "basket", "bucket", "soap",
        "toothbrush", "roll of paper", "candle", "light bulb", "flashlight", "television", "camera", "watch",
        "alarm clock", "hourglass done", "mobile phone", "telephone", "laptop", "desktop computer", "printer",
        "keyboard", "computer mouse", "battery", "floppy disk", "hammer", "axe", "wrench", "screwdriver", "toolbox",
        "magnet", "ladder", "key", "locked", "scissors", "paperclip", "pushpin", "calendar", "briefcase", "pencil",
        "paintbrush", "crayon", "spoon", "fork and knife", "kitchen knife", "closed book", "books", "newspaper",
        "envelope", "package", "money bag", "coin", "credit card", "syringe", "pill", "microscope", "telescope",
        "magnifying glass tilted left", "bell", "megaphone", "bomb", "shield", "bow and arrow"),
    "clothes": (
        "glasses", "sunglasses", "necktie", "t-shirt", "jeans", "scarf", "gloves", "coat", "socks", "dress",
        "bikini", "handbag", "backpack", "running shoe", "hiking boot", "high-heeled shoe", "crown", "top hat",
        "graduation cap", "billed cap", "lipstick", "ring", "gem stone"),
    "musical instruments and music": (
        "saxophone", "accordion", "guitar", "musical keyboard", "trumpet", "violin", "banjo", "drum", "maracas",
        "flute", "microphone", "headphone", "radio", "musical note", "musical notes"),
    "sports balls and sports": (
        "soccer ball", "baseball", "softball", "basketball", "volleyball", "american football", "rugby football",
        "tennis", "bowling", "pool 8 ball", "ping pong", "badminton", "ice hockey", "boxing glove", "goal net",
        "ice skate", "skis", "sled", "curling stone", "fishing pole", "trophy", "sports medal", "1st place medal"),
    "toys, games and parties": (
        "teddy bear", "kite", "yo-yo", "game die", "puzzle piece", "crystal ball", "video game", "joystick",
        "chess pawn", "nesting dolls", "piñata", "magic wand", "balloon", "wrapped gift", "ribbon", "party popper",
        "confetti ball", "jack-o-lantern", "Christmas tree", "fireworks", "bullseye", "artist palette",
        "framed picture"),
    "faces": (
        "grinning face", "face with tears of joy", "winking face", "smiling face with heart-eyes",
        "smiling face with sunglasses", "thinking face", "sleeping face", "face screaming in fear", "partying face",
        "cowboy hat face", "pile of poo", "clown face", "ghost", "alien", "alien monster", "robot", "skull"),
}


# The few CLDR names that are not a noun a caption can use ("a locked", "a cooking"), and stilted ones that people
# never type in full; the CLDR name stays a synonym where it reads as a noun (SYNONYMS in subjects.py).
RENAMES = {"cooking": "fried egg", "locked": "padlock", "tennis": "tennis ball", "hourglass done": "hourglass",
           "globe showing Europe-Africa": "globe", "magnifying glass tilted left": "magnifying glass"}


def read_emoji_test(path: Path) -> dict[str, dict]:
    """CLDR name -> {char, codepoints, group, subgroup, version} of every fully-qualified emoji."""
    group = subgroup = ""
    found = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#"):
            codes, rest = line.split(";", 1)
            status, comment = rest.split("#", 1)
            match = re.match(r"\s*(\S+)\s+E(\S+)\s+(.*)", comment)
            if status.strip() == "fully-qualified" and match:
                char, version, name = match.groups()
                found[name] = {"char": char, "codepoints": "-".join(codes.split()).lower(), "group": group,
                               "subgroup": subgroup, "emoji_version": version}
    return found


def caption_name(cldr: str) -> str:
    """The name as captions write it: lower case, plain ASCII letters ("piñata" -> "pinata")."""
    text = unicodedata.normalize("NFKD", cldr).encode("ascii", "ignore").decode()
    return text.lower()


def held_out_choice(name: str, salt: str, options: list[str]) -> str:
    """A fixed pick per subject (a hash of its name, so adding subjects never moves another's)."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).digest()
    return options[int.from_bytes(digest[:4], "big") % len(options)]


def build_table(known: dict[str, dict]) -> list[dict]:
    rows, seen = [], set()
    for family, names in CHOSEN.items():
        for cldr in names:
            if cldr not in known:
                raise SystemExit(f"not a fully-qualified emoji in emoji-test.txt: {cldr!r}")
            name = RENAMES.get(cldr) or caption_name(cldr)
            if name in seen or "'" in name or "\u2019" in cldr:
                raise SystemExit(f"duplicate or unusable subject name: {cldr!r}")
            seen.add(name)
            entry = known[cldr]
            rows.append({"name": name, "cldr": cldr, "family": family, "char": entry["char"],
                         "codepoints": entry["codepoints"], "subgroup": entry["subgroup"],
                         "emoji_version": entry["emoji_version"],
                         "held_out_position": held_out_choice(name, "position", list(POSITIONS)),
                         "held_out_background": held_out_choice(name, "background", list(COLOURS))})
    names = {r["name"] for r in rows}
    wrong = {word: name for word, name in SYNONYMS.items() if name not in names or word in names}
    if wrong:
        raise SystemExit(f"synonyms that name no subject, or are one: {wrong}")
    return rows


def write_doc(rows: list[dict]) -> None:
    lines = ["# Emoji subjects of the caption grammar", "",
             "Generated by `python -m diffdemo.world.emoji.make_subjects` with `diffdemo/world/emoji/subjects.json`; "
             "do not edit.",
             "", f"{len(rows)} subjects, each one Noto Color Emoji glyph (Debian's `fonts-noto-color-emoji`; images "
             "Apache-2.0, font OFL-1.1) named by its CLDR short name. Captions: "
             "`a [small|large] <subject> [position] [on a <colour> background]`, e.g. \"a panda\", \"an automobile\", "
             "\"a small rocket in the top left corner on a blue background\". A name in brackets is the CLDR name, "
             "where captions use a plainer one.", "",
             "## Subjects by family", "", "| family | count | subjects |", "| --- | --- | --- |"]
    for family in CHOSEN:
        names = [r["name"] + (f" ({r['cldr']})" if r["cldr"] != r["name"] and r["cldr"] in RENAMES else "")
                 for r in rows if r["family"] == family]
        lines.append(f"| {family} | {len(names)} | {', '.join(names)} |")
    lines += ["", "## Synonyms", "", "Words people type where CLDR is stilted; captions use them too (about one "
              "caption in four), so a model learns both.", "", "| you may type | means the subject |",
              "| --- | --- |"]
    lines += [f"| {word} | {name} |" for word, name in sorted(SYNONYMS.items())]
    lines += ["", "## Held out", "", "Never rendered in training (`is_held_out` in `diffdemo/world/emoji/scene.py`): "
              "each subject at one position and on one background colour, picked by a hash of its name. Evaluation "
              "asks for exactly these to measure generalisation.", "",
              "| subject | held-out position | held-out background |", "| --- | --- | --- |"]
    lines += [f"| {with_article(r['name'])} | {r['held_out_position']} | {r['held_out_background']} |" for r in rows]
    DOC.write_text("\n".join(lines) + "\n", encoding="utf-8")


def emoji_test_file(given: Path | None, work: Path) -> Path:
    if given:
        return given
    from diffdemo.world.data import debian_package

    root, _ = debian_package(UNICODE_DATA, work)
    return root / EMOJI_TEST


def check_tiles(rows: list[dict], tiles: Path) -> None:
    missing = [r["name"] for r in rows if not (tiles / f"{r['codepoints']}.png").exists()]
    if missing:
        raise SystemExit(f"no glyph tile in {tiles} for: {', '.join(missing)}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emoji-test", type=Path, help="Unicode's emoji-test.txt (default: from unicode-data)")
    parser.add_argument("--tiles", type=Path, help="glyph tiles to check (default: the fetched ones, if any)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as work:
        rows = build_table(read_emoji_test(emoji_test_file(args.emoji_test, Path(work))))
    from diffdemo.world.data import default_dir

    tiles = args.tiles or default_dir() / "emoji"
    if args.tiles or tiles.exists():
        check_tiles(rows, tiles)
    TABLE.write_text(json.dumps({"source": "Unicode emoji-test.txt (Debian unicode-data), CLDR short names",
                                 "subjects": rows}, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    write_doc(rows)
    counts = {family: sum(r["family"] == family for r in rows) for family in CHOSEN}
    print(json.dumps({"subjects": len(rows), **counts}))


if __name__ == "__main__":
    main()
