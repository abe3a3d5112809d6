"""Character data for `cnnlab charrnn`: vocabularies, word lists, running text, splits.

Two kinds of data:

* **words** — one item per line (`--words`, `--words-file`, `names.txt`), makemore style. Each
  word becomes `[BOUNDARY] + chars` as input and `chars + [BOUNDARY]` as target: the model sees a
  begin token, predicts every character and finally the end of the word. One token id (0) serves
  as both begin and end, as in makemore; the loss per character therefore includes the end token.
* **text** — running text (`tinyshakespeare.txt`): one long id sequence, no boundary token, cut
  into a contiguous train/validation split and fed in batched streams for truncated BPTT.

Text files are decoded strictly: a file that is not valid in its encoding is refused with the
byte offset of the first bad byte, so nobody trains on mojibake without knowing.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from cnnlab.errors import CnnlabError

BOUNDARY = 0  # token id of the begin/end-of-word token in a word vocabulary
BOUNDARY_TEXT = "<w>"  # how it is written in checkpoint.json and messages
IGNORE = -1  # target id of padding positions (ignored by the loss)


@dataclass(frozen=True)
class Vocab:
    """Characters <-> ids. With `boundary`, id 0 is the begin/end-of-word token."""

    chars: tuple[str, ...]
    boundary: bool

    def __post_init__(self) -> None:
        if len(set(self.chars)) != len(self.chars) or any(len(c) != 1 for c in self.chars):
            raise ValueError("vocabulary characters must be distinct single characters")

    @classmethod
    def build(cls, texts: Iterable[str], boundary: bool) -> Vocab:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls(tuple(sorted(seen)), boundary)

    @property
    def offset(self) -> int:
        return 1 if self.boundary else 0

    def __len__(self) -> int:
        return len(self.chars) + self.offset

    @property
    def stoi(self) -> dict[str, int]:
        return {c: i + self.offset for i, c in enumerate(self.chars)}

    def unknown(self, text: str) -> list[str]:
        """Characters of `text` outside the vocabulary, in order of first appearance."""
        known = set(self.chars)
        return list(dict.fromkeys(c for c in text if c not in known))

    def check(self, texts: Sequence[str], what: str) -> None:
        """CnnlabError naming every character of `texts` the model never saw."""
        bad: list[str] = []
        for text in texts:
            bad.extend(c for c in self.unknown(text) if c not in bad)
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            raise CnnlabError(
                f"{what} {'has' if len(texts) == 1 else 'have'} characters the model never saw: "
                f"{shown} (its vocabulary: {''.join(self.chars)!r})"
            )

    def encode(self, text: str) -> list[int]:
        self.check([text], "text")
        stoi = self.stoi
        return [stoi[c] for c in text]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            if self.boundary and i == BOUNDARY:
                out.append(BOUNDARY_TEXT)
            else:
                out.append(self.chars[i - self.offset])
        return "".join(out)

    def to_json(self) -> dict:
        return {"chars": "".join(self.chars), "boundary": self.boundary}

    @classmethod
    def from_json(cls, data: dict) -> Vocab:
        return cls(tuple(data["chars"]), bool(data["boundary"]))


# ---------------------------------------------------------------------------------------- reading


def read_text(path: str | Path, encoding: str = "utf-8") -> str:
    """The file's text, strictly decoded; CnnlabError with the byte offset of a bad byte."""
    path = Path(path)
    if not path.is_file():
        raise CnnlabError(f"text file not found: {path}")
    data = path.read_bytes()
    try:
        text = data.decode(encoding)
    except LookupError as exc:
        raise CnnlabError(f"unknown text encoding {encoding!r}") from exc
    except UnicodeDecodeError as exc:
        bad = data[exc.start : exc.start + 4].hex(" ")
        raise CnnlabError(
            f"{path} is not valid {encoding}: byte offset {exc.start} (bytes {bad}); "
            f"give its encoding with --encoding (e.g. --encoding latin-1)"
        ) from exc
    # Windows files: the model should not learn "\r" as a character of every line end.
    return text.replace("\r\n", "\n")


def words_from_lines(text: str) -> list[str]:
    """One word per line: surrounding whitespace stripped, blank lines skipped."""
    return [line.strip() for line in text.splitlines() if line.strip()]


def check_words(words: Sequence[str], source: str) -> list[str]:
    words = [w.strip() for w in words]
    if not any(words):
        raise CnnlabError(f"{source} holds no words (empty or only whitespace)")
    empty = [i for i, w in enumerate(words) if not w]
    if empty:
        raise CnnlabError(f"{source}: word {empty[0] + 1} is empty or only whitespace")
    return words


def check_text(text: str, source: str) -> str:
    if not text.strip():
        raise CnnlabError(f"{source} holds no text (empty or only whitespace)")
    return text


# ----------------------------------------------------------------------------------------- splits


def split_words(
    words: Sequence[str], fraction: float, max_items: int, seed: int
) -> tuple[list[str], list[str]]:
    """(train, validation): makemore's split — a random permutation, the first
    min(max_items, int(len * fraction)) words held out (makemore: test = min(1000, 10%))."""
    n_val = min(max_items, int(len(words) * fraction))
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(words), generator=g).tolist()
    val = [words[i] for i in order[:n_val]]
    train = [words[i] for i in order[n_val:]]
    return train, val


def split_text(text: str, fraction: float) -> tuple[str, str]:
    """(train, validation): the first (1 - fraction) of the characters, then the rest — the
    standard contiguous 90/10 split of Tiny Shakespeare (char-rnn, nanoGPT)."""
    n_val = int(len(text) * fraction)
    return text[: len(text) - n_val], text[len(text) - n_val :]


# --------------------------------------------------------------------------------------- batching


def word_tensors(words: Sequence[str], vocab: Vocab) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets), both (N, L+1) int64 with L the longest word.

    inputs  = BOUNDARY, c1 .. cn, then BOUNDARY padding
    targets = c1 .. cn, BOUNDARY, then IGNORE padding
    Padding sits after the word, so a causal RNN's outputs on the word are unaffected by it.
    """
    if not vocab.boundary:
        raise ValueError("word tensors need a vocabulary with a boundary token")
    stoi = vocab.stoi
    length = max(len(w) for w in words) + 1
    # Python lists, one tensor at the end: 32k names in ~0.1 s instead of seconds.
    xs, ys = [], []
    for w in words:
        ids = [stoi[c] for c in w]
        pad = length - len(ids) - 1
        xs.append([BOUNDARY, *ids] + [BOUNDARY] * pad)
        ys.append([*ids, BOUNDARY] + [IGNORE] * pad)
    x = torch.tensor(xs, dtype=torch.long)
    y = torch.tensor(ys, dtype=torch.long)
    return x, y


def word_batches(
    x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int, epoch: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch's batches in an order fixed by (seed, epoch) — so a resumed run sees exactly
    the batches an uninterrupted one would. Each batch is trimmed to its longest word."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(x.shape[0], generator=g)
    batches = []
    for start in range(0, x.shape[0], batch_size):
        idx = order[start : start + batch_size]
        bx, by = x[idx], y[idx]
        keep = int((by != IGNORE).sum(dim=1).max())
        batches.append((bx[:, :keep], by[:, :keep]))
    return batches


@dataclass(frozen=True)
class TextLayout:
    """How a training text is cut into `batch_size` streams for truncated BPTT, the same for
    every epoch whatever its shift of the window grid.

    Stream b of an epoch with shift s starts at character s + b * per_stream and is read in
    `n_steps` windows of `seq_len` characters (plus one target character after the last):
    the streams never overlap, and the last character read is at most
    max_shift + batch_size * per_stream <= n_chars - 1, so every shift in [0, max_shift] gives
    exactly `n_steps` windows — the steps per epoch.
    """

    batch_size: int
    seq_len: int
    per_stream: int  # characters from the start of one stream to the start of the next
    n_steps: int  # windows per stream: the training steps of every epoch
    max_shift: int  # largest grid shift (seq_len - 1; 0 when the text is too short to shift)


def text_layout(n_chars: int, batch_size: int, seq_len: int) -> TextLayout:
    """The layout for `n_chars` training characters: shifts up to seq_len - 1 if the text still
    gives every stream a window after reserving them, else no shift at all."""
    for max_shift in (seq_len - 1, 0):
        per_stream = (n_chars - 1 - max_shift) // batch_size
        n_steps = per_stream // seq_len
        if n_steps >= 1:
            return TextLayout(batch_size, seq_len, per_stream, n_steps, max_shift)
    raise CnnlabError(
        f"the training text ({n_chars} characters) is too short for --batch-size "
        f"{batch_size} × --seq-len {seq_len}; lower them"
    )


def text_streams(ids: torch.Tensor, layout: TextLayout, shift: int = 0) -> torch.Tensor:
    """The id sequence cut into `layout.batch_size` contiguous streams for truncated BPTT,
    (B, n_steps * seq_len + 1): row b continues where the previous window of row b ended, so the
    hidden state carried between windows is the true state of the text read so far (char-rnn's
    batching). The characters before `shift` and the tail that fills no window are unused."""
    if not 0 <= shift <= layout.max_shift:
        raise ValueError(f"shift {shift} outside [0, {layout.max_shift}]")
    used = layout.n_steps * layout.seq_len
    starts = [shift + b * layout.per_stream for b in range(layout.batch_size)]
    return torch.stack([ids[s : s + used + 1] for s in starts])


def stream_window(streams: torch.Tensor, step: int, seq_len: int):
    """(inputs, targets) of window `step` of every stream: (B, seq_len) each."""
    start = step * seq_len
    return streams[:, start : start + seq_len], streams[:, start + 1 : start + seq_len + 1]


def bits(nats: float) -> float:
    """Nats per character -> bits per character."""
    return nats / math.log(2)
