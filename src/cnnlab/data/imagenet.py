"""ImageNet-1k label resolution: from a user's label ("beagle", "n01440764_tench") to a class index.

The class metadata comes from timm's `ImageNetInfo("imagenet-1k")`: WordNet ids in the index
order every ImageNet-1k model uses, and each class's WordNet synonym list ("tench, Tinca tinca").

Two matching rules:

- `"synonym"` (default): a label resolves by WordNet id (`n01440764`, also as the start of a file
  stem, `n01440764_tench`), or by any synonym of a class, case-insensitive, with `_`, `-` and spaces
  equivalent, apostrophes and dots ignored (`potters_wheel`, `RV`), and a trailing counter (`_2`,
  ` (1)`, `-3`) ignored. A label that matches no class, or several (ImageNet has 19 such names,
  e.g. "crane" is both a bird and a machine, "maillot" both a swimsuit and a leotard), is a
  problem: it is reported, never guessed.
- `"prefix"`: the lab's rule, kept so that its numbers can be reproduced. The lab read a
  class-names file with one line per class ("tench, Tinca tinca") and counted a prediction as
  right when the predicted class's line `startswith(label)` (case-sensitive). So a label does not
  name one class: it *accepts* every class whose line starts with it, and a prediction of any of
  them is right. "bee" accepts "bee" and "bee eater" (and "beer bottle", "beer glass"), "drum"
  accepts "drum, membranophone, tympan" and "drumstick", "hammer" "hammer" and "hammerhead";
  "tiger" accepts "tiger shark", "tiger cat", "tiger" and "tiger beetle". Of the 1000 class
  lines, 25 are a prefix of another line (both "crane" lines included), and 44 classes' first
  names accept more than one class. `LabelMatch.accepted` is that set. Before matching, a label
  gets only the clean-ups a file name needs (no-ops on the lab's own names, "bee.jpg"): a
  leading WordNet id is dropped, `_` reads as a space, a trailing counter is dropped.
"""

from __future__ import annotations

import csv
import difflib
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from cnnlab.errors import CnnlabError

MATCH_RULES = ("synonym", "prefix")

# A WordNet noun id ("n" + 8-digit synset offset), alone or starting a file stem.
_WNID = re.compile(r"^(n\d{8})(?:$|[\s_\-.]+(.*)$)", re.IGNORECASE)
# A trailing duplicate counter as file managers and cameras add them: "x_2", "x-3", "x 4", "x (1)".
# No ImageNet-1k synonym contains a digit, so dropping one can never hide a real class name.
_COUNTER = re.compile(r"^(.*?\S)(?:[\s_\-]*\(\d+\)|[\s_\-]+\d+)$")
_SEPARATORS = re.compile(r"[\s_\-]+")


def normalise(text: str) -> str:
    """The matching key of a name: case-folded, `_`/`-`/spaces as one space, no `'` or `.`."""
    text = text.casefold().replace("'", "").replace("\u2019", "").replace(".", "")
    return _SEPARATORS.sub(" ", text).strip()


def strip_counter(label: str) -> str:
    """'great_white_shark_2' -> 'great_white_shark'; 'tench (1)' -> 'tench'; others unchanged."""
    m = _COUNTER.match(label.strip())
    return m.group(1) if m else label.strip()


@dataclass(frozen=True)
class LabelMatch:
    """The outcome of resolving one label.

    Under the synonym rule, `index` is the one class to score against, or None when the label is
    unknown (no candidates) or ambiguous (several candidates). Under the prefix rule there is no
    single class: `index` is None and `candidates` are all the classes the label accepts. Either
    way, `accepted` is the set a prediction must fall in to count as right; use `ok`.
    """

    label: str  # the raw label, as discovered
    index: int | None
    candidates: tuple[int, ...]  # every class the label matched
    suggestions: tuple[str, ...] = ()  # closest class names, for unknown labels
    rule: str = "synonym"

    @property
    def accepted(self) -> tuple[int, ...]:
        """The classes a right prediction may be: one (synonym rule), or every class whose line
        starts with the label (prefix rule); () when the label cannot be scored."""
        if self.rule == "prefix":
            return self.candidates
        return () if self.index is None else (self.index,)

    @property
    def ok(self) -> bool:
        return bool(self.accepted)

    @property
    def ambiguous(self) -> bool:
        return not self.accepted and len(self.candidates) > 1

    @property
    def unknown(self) -> bool:
        return not self.candidates


@dataclass(frozen=True)
class ImageNetClasses:
    """The 1000 ImageNet-1k classes in model output order."""

    wnids: tuple[str, ...]  # WordNet ids, e.g. "n01440764"
    synonyms: tuple[tuple[str, ...], ...]  # per class, e.g. ("tench", "Tinca tinca")
    definitions: tuple[str, ...] = ()  # per class, WordNet gloss (tells the two "crane"s apart)

    def __post_init__(self) -> None:
        if len(self.wnids) != len(self.synonyms):
            raise ValueError("wnids and synonyms differ in length")
        if self.definitions and len(self.definitions) != len(self.wnids):
            raise ValueError("wnids and definitions differ in length")

    def __len__(self) -> int:
        return len(self.wnids)

    @functools.cached_property
    def names(self) -> tuple[str, ...]:
        """Display name of each class: its first synonym (built once: callers index it per
        prediction, 1,000 names a build)."""
        return tuple(s[0] for s in self.synonyms)

    @functools.cached_property
    def _by_wnid(self) -> dict[str, int]:
        return {w.lower(): i for i, w in enumerate(self.wnids)}

    @functools.cached_property
    def _by_key(self) -> dict[str, tuple[int, ...]]:
        """normalised synonym -> classes that have it (several for the ambiguous names)."""
        index: dict[str, list[int]] = {}
        for i, names in enumerate(self.synonyms):
            for name in names:
                bucket = index.setdefault(normalise(name), [])
                if i not in bucket:
                    bucket.append(i)
        return {k: tuple(v) for k, v in index.items()}

    @functools.cached_property
    def lines(self) -> tuple[str, ...]:
        """The lab's class-names file: one line per class, synonyms joined by ', '."""
        return tuple(", ".join(s) for s in self.synonyms)

    def describe(self, index: int, width: int = 50) -> str:
        """'n02012849 crane (large long-necked wading bird...)': enough to tell classes apart."""
        text = f"{self.wnids[index]} {self.names[index]}"
        if self.definitions:
            gloss = self.definitions[index]
            if len(gloss) > width:
                gloss = gloss[: width - 3].rstrip() + "..."
            text += f" ({gloss})"
        return text

    def resolve(self, label: str, match: str = "synonym") -> LabelMatch:
        """Resolve one label by `match` rule ("synonym" or "prefix"); see the module docstring."""
        if match == "synonym":
            return self._resolve_synonym(label)
        if match == "prefix":
            return self._resolve_prefix(label)
        raise ValueError(f"unknown match rule {match!r}; expected one of {MATCH_RULES}")

    def _resolve_synonym(self, label: str) -> LabelMatch:
        text = label.strip()
        m = _WNID.match(text)
        if m:
            wnid_index = self._by_wnid.get(m.group(1).lower())
            if wnid_index is not None:
                # The id is exact; any name after it ("n01440764_tench") is only decoration.
                return LabelMatch(label, wnid_index, (wnid_index,))
            # An id outside ImageNet-1k (e.g. an ImageNet-21k synset): the name may still match.
            text = m.group(2) or ""
        candidates: tuple[int, ...] = ()
        if normalise(text):
            candidates = self._by_key.get(normalise(text), ())
            if not candidates:
                candidates = self._by_key.get(normalise(strip_counter(text)), ())
        if len(candidates) == 1:
            return LabelMatch(label, candidates[0], candidates)
        if candidates:
            return LabelMatch(label, None, candidates)
        return LabelMatch(label, None, (), self._suggest(strip_counter(text) or label))

    def _resolve_prefix(self, label: str) -> LabelMatch:
        text = label.strip()
        m = _WNID.match(text)
        if m:
            text = m.group(2) or ""
        text = strip_counter(text).replace("_", " ").strip()
        if not text:  # "".startswith("") is True for every line: it would accept every class
            return LabelMatch(label, None, (), (), "prefix")
        # The lab's test, literally: the predicted class's line starts with the label.
        accepted = tuple(i for i, line in enumerate(self.lines) if line.startswith(text))
        if not accepted:
            return LabelMatch(label, None, (), self._suggest(text), "prefix")
        return LabelMatch(label, None, accepted, (), "prefix")

    def _suggest(self, text: str, n: int = 3) -> tuple[str, ...]:
        """Closest class names: 'puma (cougar)' when the near miss is a later synonym."""
        key = normalise(text)
        if not key:
            return ()
        keys = list(self._by_key)
        # A whole word of longer names ("shark" -> great white shark, tiger shark) first: difflib's
        # ratio undervalues such fragments; then spelling near misses ("pumma" -> puma).
        close = sorted((k for k in keys if key in k.split(" ")), key=len)[: 3 * n]
        close += [k for k in difflib.get_close_matches(key, keys, n=n, cutoff=0.6)
                  if k not in close]
        shown: dict[int, str] = {}  # one entry per class
        for k in close:
            for i in self._by_key[k]:
                name = self.names[i]
                if i not in shown:
                    shown[i] = name if normalise(name) == k else f"{self._original(i, k)} ({name})"
        return tuple(shown.values())[:n]

    def _original(self, index: int, key: str) -> str:
        return next(s for s in self.synonyms[index] if normalise(s) == key)


def _timm_info(file_name: str) -> list[str]:
    """Lines of one of timm's bundled class files (timm/data/_info/), read without importing
    timm: its import costs ~2.3 CPU-s on top of torch (BENCHMARKS.md "Start-up"), and a command
    that scores photos on an exported ONNX graph needs nothing else of it. These are the files
    timm's own `ImageNetInfo("imagenet-1k")` reads (tests/test_startup_imports.py compares)."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("timm")  # a top-level package: found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise CnnlabError("the ImageNet class names come with timm: pip install timm")
    folder = Path(next(iter(spec.submodule_search_locations))) / "data" / "_info"
    return (folder / file_name).read_text(encoding="utf-8").splitlines()


@functools.lru_cache(maxsize=1)
def load_imagenet_classes() -> ImageNetClasses:
    """The ImageNet-1k classes from timm's bundled WordNet metadata (no network; cached)."""
    wnids = tuple(_timm_info("imagenet_synsets.txt"))
    # Tab-separated "wnid<TAB>text", as timm's ImageNetInfo reads them (csv, delimiter tab).
    lemmas = dict(csv.reader(_timm_info("imagenet_synset_to_lemma.txt"), delimiter="\t"))
    glosses = dict(csv.reader(_timm_info("imagenet_synset_to_definition.txt"), delimiter="\t"))
    # Lemma lines are "tench, Tinca tinca"; no ImageNet-1k lemma contains a comma itself.
    synonyms = tuple(tuple(s.strip() for s in lemmas[w].split(", ")) for w in wnids)
    # timm's detailed description is "<lemmas>: <definition>"; the definition is what follows.
    definitions = tuple(f"{lemmas[w]}: {glosses[w]}".split(": ", 1)[-1] for w in wnids)
    return ImageNetClasses(wnids, synonyms, definitions)


def resolve_labels(
    labels: Iterable[str], classes: ImageNetClasses, match: str = "synonym"
) -> tuple[dict[str, tuple[int, ...]], list[LabelMatch]]:
    """Resolve each distinct label once: ({label: accepted classes}, [unknown or ambiguous]).

    Under the synonym rule every accepted tuple holds one class; under the prefix rule, every
    class whose line starts with the label. Problems keep the order in which labels first
    appear, so the error message is stable.
    """
    resolved: dict[str, tuple[int, ...]] = {}
    problems: list[LabelMatch] = []
    seen: set[str] = set()
    for label in labels:
        if label in seen:
            continue
        seen.add(label)
        result = classes.resolve(label, match)
        if result.ok:
            resolved[label] = result.accepted
        else:
            problems.append(result)
    return resolved, problems


def describe_problems(problems: list[LabelMatch], classes: ImageNetClasses) -> str:
    """One line naming every unknown or ambiguous label, ready for a CnnlabError."""
    if not problems:
        return ""
    parts = []
    for p in problems:
        if p.candidates:
            options = "; ".join(classes.describe(i) for i in p.candidates)
            parts.append(f"{p.label!r} is ambiguous: {options}")
        elif p.suggestions:
            parts.append(f"{p.label!r} is unknown (did you mean: {', '.join(p.suggestions)}?)")
        else:
            parts.append(f"{p.label!r} is unknown")
    n = len(problems)
    head = f"{n} label{'s' if n > 1 else ''} match{'' if n > 1 else 'es'} no single ImageNet class"
    return (
        f"{head}: " + " | ".join(parts)
        + " -- use a WordNet id or a more specific name, or --skip-unknown to score the rest"
    )
