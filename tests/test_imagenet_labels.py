"""ImageNet label resolution: every label form of the issue, ambiguity, unknowns, the lab's rule.

Oracles: timm's own metadata (class 0 is n01440764 "tench, Tinca tinca"), the WordNet id written
into every file name of the real ImageNet sample folder, and the lab's rule re-implemented here as
the plain loop it was (`line.startswith(label)` over one line per class).
"""

from __future__ import annotations

import functools

import pytest

from cnnlab.data.folders import discover
from cnnlab.data.imagenet import (
    ImageNetClasses,
    LabelMatch,
    describe_problems,
    load_imagenet_classes,
    normalise,
    resolve_labels,
    strip_counter,
)

TENCH, GREAT_WHITE, BEAGLE = 0, 2, 162
CRANE_BIRD, CRANE_MACHINE = 134, 517
MAILLOT, MAILLOT_TANK_SUIT = 638, 639


@pytest.fixture(scope="module")
def classes() -> ImageNetClasses:
    return load_imagenet_classes()


def test_metadata_matches_timm(classes):
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    assert len(classes) == 1000 == len(set(classes.wnids))
    assert list(classes.wnids) == info.label_names()
    assert classes.wnids[TENCH] == "n01440764"
    assert classes.synonyms[TENCH] == ("tench", "Tinca tinca")
    assert classes.names[GREAT_WHITE] == "great white shark"
    # Synonyms re-joined give back timm's lemma line for every class (nothing split wrongly).
    for i, wnid in enumerate(classes.wnids):
        assert ", ".join(classes.synonyms[i]) == info.label_name_to_description(wnid)
    assert classes.definitions[CRANE_BIRD] != classes.definitions[CRANE_MACHINE]


@pytest.mark.parametrize(
    ("label", "index"),
    [
        ("n01440764", TENCH),  # WordNet id
        ("N01440764", TENCH),  # ... in any case
        ("n01440764_tench", TENCH),  # wnid-prefixed file stem
        ("n01440764_anything_else", TENCH),  # the id is exact; the name after it is decoration
        ("tench", TENCH),  # first synonym
        ("Tinca tinca", TENCH),  # a later synonym
        ("tinca_tinca", TENCH),
        ("TENCH", TENCH),  # case
        ("Great White Shark", GREAT_WHITE),
        ("great_white_shark", GREAT_WHITE),  # `_`, `-` and spaces are equivalent
        ("great-white-shark", GREAT_WHITE),
        ("great  white_-shark", GREAT_WHITE),
        ("man-eater", GREAT_WHITE),  # later synonym, written with its own hyphen
        ("man_eater", GREAT_WHITE),
        ("Carcharodon carcharias", GREAT_WHITE),
        ("great_white_shark_2", GREAT_WHITE),  # trailing counters
        ("great white shark (1)", GREAT_WHITE),
        ("great_white_shark(12)", GREAT_WHITE),
        ("beagle-3", BEAGLE),
        ("beagle 4", BEAGLE),
        ("  beagle ", BEAGLE),
        ("potters_wheel", 739),  # "potter's wheel": apostrophes dropped
        ("potter's wheel", 739),
        ("jack-o-lantern", 607),  # "jack-o'-lantern"
        ("RV", 757),  # "R.V.": dots dropped
        ("n99999999_tench", TENCH),  # a wnid outside ImageNet-1k: the name still resolves
    ],
)
def test_resolves_every_label_form(classes, label, index):
    m = classes.resolve(label)
    assert m == LabelMatch(label, index, (index,), ())
    assert m.ok and not m.unknown and not m.ambiguous


@pytest.mark.parametrize("name", ["volcano.jpg", "beagle.jpeg", "bighorn.JPG",
                                  "n01440764_tench.JPEG", "great_white_shark_2.png",
                                  "tench (1).jpg"])
def test_file_names_of_the_issue_resolve(classes, name):
    from cnnlab.data.folders import label_from_filename

    expected = {"volcano.jpg": "volcano", "beagle.jpeg": "beagle", "bighorn.JPG": "bighorn",
                "n01440764_tench.JPEG": "tench", "great_white_shark_2.png": "great white shark",
                "tench (1).jpg": "tench"}[name]
    m = classes.resolve(label_from_filename(name))
    assert m.ok
    assert classes.names[m.index] == expected


def test_counter_is_stripped_only_when_the_full_label_fails():
    assert strip_counter("great_white_shark_2") == "great_white_shark"
    assert strip_counter("tench (1)") == "tench"
    assert strip_counter("beagle-3") == "beagle"
    assert strip_counter("beagle") == "beagle"
    assert strip_counter("2") == "2"  # a bare number is a label, not a counter
    assert normalise(" Great_White-shark ") == "great white shark"


@pytest.mark.parametrize(
    ("label", "candidates"),
    [
        ("crane", (CRANE_BIRD, CRANE_MACHINE)),  # both first synonyms: a bird and a machine
        ("maillot", (MAILLOT, MAILLOT_TANK_SUIT)),
        ("Crane_2", (CRANE_BIRD, CRANE_MACHINE)),
        ("cardigan", (264, 474)),  # "Cardigan" (corgi) vs "cardigan" (sweater): case-insensitive
        ("panda", (387, 388)),  # lesser panda and giant panda
    ],
)
def test_ambiguous_labels_are_not_guessed(classes, label, candidates):
    m = classes.resolve(label)
    assert m.index is None and m.ambiguous and not m.unknown
    assert m.candidates == candidates


def test_ambiguous_names_in_imagenet_are_exactly_the_known_19(classes):
    # Independent count: names (normalised) that appear in the synonym lists of >1 class.
    owners: dict[str, set[int]] = {}
    for i, names in enumerate(classes.synonyms):
        for n in names:
            owners.setdefault(n.lower().replace("-", " ").replace("_", " "), set()).add(i)
    shared = {n for n, owner in owners.items() if len(owner) > 1}
    assert len(shared) == 19
    assert {"crane", "maillot", "cardigan", "panda", "tub", "harp"} <= shared
    for n in shared:
        assert classes.resolve(n).ambiguous, n


@pytest.mark.parametrize(
    ("label", "suggestion"),
    [
        ("ants", "ant"),  # the hymenoptera folders are plural
        ("bees", "bee"),
        ("pumma", "puma (cougar)"),  # a later synonym is shown with its class name
        ("shark", "tiger shark"),  # a fragment of longer names
        ("beegle_2", "beagle"),
    ],
)
def test_unknown_labels_get_suggestions(classes, label, suggestion):
    m = classes.resolve(label)
    assert m.unknown and m.index is None and m.candidates == ()
    assert suggestion in m.suggestions
    assert 1 <= len(m.suggestions) <= 3


@pytest.mark.parametrize("label", ["", "   ", "_2", "n99999999", "xyzzy"])
def test_labels_without_any_class(classes, label):
    m = classes.resolve(label)
    assert m.unknown
    assert m.suggestions == ()


def test_unknown_match_rule_is_refused(classes):
    with pytest.raises(ValueError, match="match rule"):
        classes.resolve("tench", "fuzzy")


def test_resolve_labels_and_one_message_for_all_problems(classes):
    labels = ["tench", "ants", "crane", "tench", "xyzzy", "crane", "n01440764_tench"]
    resolved, problems = resolve_labels(labels, classes)
    assert resolved == {"tench": (TENCH,), "n01440764_tench": (TENCH,)}
    assert [p.label for p in problems] == ["ants", "crane", "xyzzy"]  # once each, first-seen order
    msg = describe_problems(problems, classes)
    assert "\n" not in msg  # CnnlabError messages are printed as one line
    assert msg.startswith("3 labels match no single ImageNet class")
    assert "'ants' is unknown (did you mean: ant" in msg
    # Both cranes are named by WordNet id and told apart by their WordNet definitions.
    assert "'crane' is ambiguous: n02012849 crane (large long-necked wading bird" in msg
    assert "n03126707 crane (lifts and moves heavy objects" in msg
    assert "'xyzzy' is unknown" in msg and "--skip-unknown" in msg
    assert describe_problems([], classes) == ""
    one = describe_problems(resolve_labels(["xyzzy"], classes)[1], classes)
    assert one.startswith("1 label matches no single")


@functools.cache
def _lab_class_file() -> tuple[str, ...]:
    """The lab's class file, built here from timm's metadata: one "tench, Tinca tinca" line per
    class, in model output order."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo("imagenet-1k")
    return tuple(info.label_name_to_description(w) for w in info.label_names())


def _lab_accepts(classes, text):
    """The lab's test, literally: prediction j is right when classes[j].startswith(label)."""
    return tuple(j for j, line in enumerate(_lab_class_file()) if line.startswith(text))


@pytest.mark.parametrize(
    ("label", "accepted", "synonym"),
    [
        ("tench", (TENCH,), TENCH),
        ("great white shark", (GREAT_WHITE,), GREAT_WHITE),
        ("great_white_shark_2", (GREAT_WHITE,), GREAT_WHITE),  # file-name clean-ups still apply
        ("n01440764_tench", (TENCH,), TENCH),
        # A label accepts every class whose line starts with it, not the first such line:
        ("bee", (92, 309, 440, 441), 309),  # bee eater, bee, beer bottle, beer glass
        ("drum", (541, 542), 541),  # "drum, membranophone, tympan", "drumstick"
        ("hammer", (4, 587), 587),  # hammerhead, hammer
        ("tiger", (3, 282, 292, 300), 292),  # tiger shark, tiger cat, tiger, tiger beetle
        ("otter", (175, 360), 360),  # otterhound, otter
        ("plate", (729, 923), 923),  # plate rack, plate
        ("crane", (CRANE_BIRD, CRANE_MACHINE), None),  # both lines are "crane"; synonym: ambiguous
        ("maillot", (MAILLOT, MAILLOT_TANK_SUIT), None),
        ("cat", (484,), None),  # "cat" is no ImageNet class, but "catamaran" starts with it
    ],
)
def test_prefix_rule_accepts_every_class_whose_line_starts_with_the_label(
    classes, label, accepted, synonym
):
    m = classes.resolve(label, "prefix")
    assert m.ok and m.accepted == m.candidates == accepted
    assert m.index is None  # no single class under the prefix rule
    lab_text = label.replace("_2", "").replace("n01440764_", "").replace("_", " ")
    assert _lab_accepts(classes, lab_text) == accepted
    assert classes.resolve(label).index == synonym  # the synonym rule is unchanged


def test_prefix_rule_is_case_sensitive_and_needs_the_first_name(classes):
    assert classes.resolve("Tinca tinca", "prefix").unknown  # the line starts with "tench"
    assert classes.resolve("TENCH", "prefix").unknown  # str.startswith is case-sensitive
    assert classes.resolve("Bee", "prefix").unknown
    assert classes.resolve("ants", "prefix").unknown
    # Empty text would match every line ("".startswith) and accept all 1000; refused instead.
    assert classes.resolve("", "prefix").unknown
    assert classes.resolve("n01440764", "prefix").unknown
    resolved, problems = resolve_labels(["bee", "TENCH"], classes, match="prefix")
    assert resolved == {"bee": (92, 309, 440, 441)}
    assert [p.label for p in problems] == ["TENCH"]


def test_how_lenient_the_prefix_rule_is(classes):
    """The figures quoted in data/imagenet.py, README.md and BENCHMARKS.md, counted plainly."""
    lines = _lab_class_file()
    assert lines == classes.lines
    is_prefix = [i for i, a in enumerate(lines)
                 if any(j != i and b.startswith(a) for j, b in enumerate(lines))]
    assert len(is_prefix) == 25  # class lines that are a prefix of another line
    # Named by its first name, as the lab's photos were, a class accepts more than itself:
    lenient = [i for i, n in enumerate(classes.names) if len(_lab_accepts(classes, n)) > 1]
    assert len(lenient) == 44
    assert classes.lines[CRANE_BIRD] == classes.lines[CRANE_MACHINE] == "crane"


def test_every_imagenet_sample_resolves_to_the_class_of_its_wnid(classes, shared_data):
    """Oracle: the WordNet id in each of the 250 real file names."""
    found = discover(shared_data("imagenet-samples"))
    assert found.label_source == "filename" and len(found.items) == 250
    resolved, problems = resolve_labels([it.label for it in found.items], classes)
    assert problems == []
    name_only_ambiguous = []
    for item in found.items:
        wnid, _, name = item.label.partition("_")
        truth = classes.wnids.index(wnid)
        assert resolved[item.label] == (truth,)
        # The name part alone resolves to the same class, or is one of ImageNet's shared names
        # (then the true class is among the candidates): the synonym index agrees with the ids.
        by_name = classes.resolve(name)
        if by_name.ok:
            assert by_name.index == truth, item.label
        else:
            assert by_name.ambiguous and truth in by_name.candidates, item.label
            name_only_ambiguous.append(name)
    assert sorted(name_only_ambiguous) == ["Cardigan", "crayfish", "tub"]


def test_lab_prefix_rule_on_the_imagenet_samples(classes, shared_data):
    """On the 250 sample names (WordNet ids dropped), the lab's rule accepts the true class every
    time, and for 10 names other classes as well."""
    found = discover(shared_data("imagenet-samples"))
    lenient = {}
    for item in found.items:
        wnid, _, name = item.label.partition("_")
        m = classes.resolve(item.label, "prefix")
        assert m.accepted == _lab_accepts(classes, name.replace("_", " "))
        assert classes.wnids.index(wnid) in m.accepted, item.label
        if len(m.accepted) > 1:
            lenient[name] = len(m.accepted)
    assert lenient == {"hen": 2, "tiger": 4, "otter": 2, "bow": 2, "cab": 2, "chain": 4,
                       "slot": 2, "sunglass": 2, "cliff": 2, "acorn": 2}
