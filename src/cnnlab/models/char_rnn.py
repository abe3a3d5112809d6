"""Character-level RNN / GRU / LSTM: the model, and completing / sampling text with it.

    input ids (B, T) -> one-hot or learned embedding -> nn.RNN | nn.GRU | nn.LSTM (layers,
    hidden, dropout between layers) -> dropout -> Linear(hidden, |V|) -> logits (B, T, |V|)

`one_hot=True, cell="rnn", layers=1` is exactly the classic lab: `nn.RNN(input_size=|V|,
hidden_size=12)` on one-hot vectors followed by a linear read-out.

Generation (`complete`, `sample`) is greedy (temperature 0) or samples from the softmax at a
temperature, optionally restricted to the top-k characters; sampling draws from a
`torch.Generator` seeded by the caller, so a seed reproduces a sample exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from cnnlab.data.text import BOUNDARY, Vocab
from cnnlab.errors import CnnlabError

CELLS = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}

Hidden = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True)
class CharRNNConfig:
    vocab_size: int
    cell: str = "gru"
    layers: int = 1
    hidden: int = 64
    embedding: int = 32  # width of the learned embedding (unused with one_hot)
    one_hot: bool = False
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.cell not in CELLS:
            raise CnnlabError(f"unknown --cell {self.cell!r}; choose one of {', '.join(CELLS)}")
        for name in ("vocab_size", "layers", "hidden", "embedding"):
            if getattr(self, name) < 1:
                raise CnnlabError(f"--{name.replace('_', '-')} must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise CnnlabError(f"--dropout must be in [0, 1), got {self.dropout}")


class CharRNN(nn.Module):
    def __init__(self, cfg: CharRNNConfig):
        super().__init__()
        self.cfg = cfg
        width = cfg.vocab_size if cfg.one_hot else cfg.embedding
        self.embed = None if cfg.one_hot else nn.Embedding(cfg.vocab_size, cfg.embedding)
        self.rnn = CELLS[cfg.cell](
            input_size=width,
            hidden_size=cfg.hidden,
            num_layers=cfg.layers,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            batch_first=True,
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.head = nn.Linear(cfg.hidden, cfg.vocab_size)

    def forward(self, ids: torch.Tensor, hidden: Hidden = None) -> tuple[torch.Tensor, Hidden]:
        """ids (B, T) int64 -> (logits (B, T, |V|), final hidden state)."""
        x = F.one_hot(ids, self.cfg.vocab_size).float() if self.embed is None else self.embed(ids)
        out, hidden = self.rnn(x, hidden)
        return self.head(self.drop(out)), hidden


def detach(hidden: Hidden) -> Hidden:
    """The state without its graph: truncated BPTT stops gradients at the window edge."""
    if hidden is None:
        return None
    if isinstance(hidden, tuple):
        return tuple(h.detach() for h in hidden)  # type: ignore[return-value]
    return hidden.detach()


# ------------------------------------------------------------------------------------ generation


@dataclass(frozen=True)
class Sampling:
    """How the next character is chosen. temperature 0 = greedy (argmax)."""

    temperature: float = 0.0
    top_k: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not math.isfinite(self.temperature):
            raise CnnlabError(f"--temperature must be >= 0, got {self.temperature}")
        if self.top_k is not None and self.top_k < 1:
            raise CnnlabError(f"--top-k must be at least 1, got {self.top_k}")


def _choose(logits: torch.Tensor, how: Sampling, g: torch.Generator) -> tuple[int, float]:
    """(next id, its probability under the model's own softmax) from logits (|V|,)."""
    probs = torch.softmax(logits, dim=-1)
    if how.temperature == 0:
        i = int(torch.argmax(logits))
        return i, float(probs[i])
    scaled = logits / how.temperature
    if how.top_k is not None and how.top_k < scaled.numel():
        kth = torch.topk(scaled, how.top_k).values[-1]
        scaled = scaled.masked_fill(scaled < kth, float("-inf"))
    i = int(torch.multinomial(torch.softmax(scaled, dim=-1), 1, generator=g))
    return i, float(probs[i])


@dataclass(frozen=True)
class Completion:
    prefix: str
    completion: str  # the whole word: prefix + generated characters
    probability: float  # model probability of the generated characters (and the end token)
    ended: bool  # False when --max-length cut it before the end-of-word token


@torch.no_grad()
def complete(
    model: CharRNN, vocab: Vocab, prefixes: list[str], how: Sampling, max_length: int = 30
) -> list[Completion]:
    """Each prefix continued until the end-of-word token (or `max_length` characters in all).

    The word model reads the begin token and then the prefix, exactly as in training; the
    probability is that of the continuation given the prefix (product over generated tokens,
    the end token included), i.e. how sure the model is of this completion.
    """
    if not vocab.boundary:
        raise CnnlabError(
            "this checkpoint was trained on running text, not words; use `cnnlab charrnn sample`"
        )
    vocab.check(prefixes, "prefix" if len(prefixes) == 1 else "prefixes")
    model.eval()
    g = torch.Generator().manual_seed(how.seed)
    stoi = vocab.stoi
    results = []
    for prefix in prefixes:
        ids = [BOUNDARY] + [stoi[c] for c in prefix]
        logits, hidden = model(torch.tensor([ids]))
        last = logits[0, -1]
        out, logp, ended = [], 0.0, False
        while len(prefix) + len(out) < max_length:
            i, p = _choose(last, how, g)
            logp += math.log(max(p, 1e-300))
            if i == BOUNDARY:
                ended = True
                break
            out.append(i)
            logits, hidden = model(torch.tensor([[i]]), hidden)
            last = logits[0, -1]
        results.append(Completion(prefix, prefix + vocab.decode(out), math.exp(logp), ended))
    return results


@torch.no_grad()
def sample_text(model: CharRNN, vocab: Vocab, prompt: str, length: int, how: Sampling) -> str:
    """`prompt` followed by `length` generated characters (running-text models).

    With a word model the text is a run of words, one per line (the boundary token is a
    line break), which is the natural way to read samples of names."""
    if length < 0:
        raise CnnlabError(f"--length must be >= 0, got {length}")
    vocab.check([prompt], "prompt")
    model.eval()
    g = torch.Generator().manual_seed(how.seed)
    stoi = vocab.stoi
    ids = [stoi[c] for c in prompt]
    if vocab.boundary:
        ids = [BOUNDARY, *ids]
    elif not ids:
        raise CnnlabError("a running-text model needs a --prompt of at least one character")
    logits, hidden = model(torch.tensor([ids]))
    last = logits[0, -1]
    out: list[str] = []
    for _ in range(length):
        i, _p = _choose(last, how, g)
        out.append("\n" if vocab.boundary and i == BOUNDARY else vocab.decode([i]))
        logits, hidden = model(torch.tensor([[i]]), hidden)
        last = logits[0, -1]
    return prompt + "".join(out)
