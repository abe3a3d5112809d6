"""charrnn library: the lab's completions, losses against oracles, exact resume, bad input."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn import functional as F

from cnnlab.data import text as textdata
from cnnlab.data.text import BOUNDARY, IGNORE, Vocab
from cnnlab.errors import CnnlabError
from cnnlab.models.char_rnn import CharRNN, CharRNNConfig, Sampling, complete, sample_text
from cnnlab.tasks import charrnn
from cnnlab.tasks.charrnn import TrainConfig, load_checkpoint, train

LAB = ("hello", "green", "start")


# ----------------------------------------------------------------------------------- the lab


def test_lab_completes_its_three_words_exactly(tmp_path):
    results = train(TrainConfig(words=LAB, seed=0), out=tmp_path / "run")
    assert {p: c for p, (c, _) in results["completions"].items()} == {
        "h": "hello",
        "g": "green",
        "s": "start",
    }
    model, vocab, info = load_checkpoint(tmp_path / "run")
    comps = complete(model, vocab, ["h", "g", "s"], Sampling())
    assert [c.completion for c in comps] == ["hello", "green", "start"]
    assert all(c.ended and c.probability > 0.9 for c in comps)
    assert info["step"] == 100 and info["mode"] == "words"
    for name in (
        "last.json",
        "checkpoints/last-000001.safetensors",
        "checkpoints/last-000001.state.pt",
        "metrics.jsonl",
        "results.json",
        "config.json",
        "environment.json",
        "loss_curve.png",
    ):
        assert (tmp_path / "run" / name).is_file(), name


def test_the_lab_setup_is_literally_expressible():
    """--one-hot --cell rnn --hidden 12: nn.RNN(|V|, 12) on one-hot vectors + Linear(12, |V|)."""
    model = CharRNN(CharRNNConfig(vocab_size=11, cell="rnn", hidden=12, one_hot=True))
    lab_rnn, lab_fc = nn.RNN(11, 12, batch_first=True), nn.Linear(12, 11)
    assert model.embed is None
    assert sum(p.numel() for p in model.parameters()) == sum(
        p.numel() for p in [*lab_rnn.parameters(), *lab_fc.parameters()]
    )
    # Same weights -> same logits as the lab's hand-written forward pass.
    lab_rnn.load_state_dict(model.rnn.state_dict())
    lab_fc.load_state_dict(model.head.state_dict())
    ids = torch.tensor([[0, 3, 5, 7]])
    out, _ = lab_rnn(F.one_hot(ids, 11).float())
    torch.testing.assert_close(model(ids)[0], lab_fc(out), rtol=0, atol=0)


def test_variable_length_words_complete(tmp_path):
    words = ("apple", "banana", "kiwi", "fig", "cherry")
    train(TrainConfig(words=words, seed=0, epochs=150), out=tmp_path / "run")
    model, vocab, _ = load_checkpoint(tmp_path / "run")
    comps = complete(model, vocab, ["a", "ba", "k", "f", "ch"], Sampling())
    assert [c.completion for c in comps] == ["apple", "banana", "kiwi", "fig", "cherry"]


def test_max_length_cuts_a_completion():
    torch.manual_seed(0)
    vocab = Vocab(tuple("ab"), boundary=True)
    model = CharRNN(CharRNNConfig(vocab_size=3))
    with torch.no_grad():  # a model that never ends a word: the end token's logit is -inf-ish
        model.head.bias[:] = torch.tensor([-1e4, 5.0, 0.0])
    (c,) = complete(model, vocab, ["a"], Sampling(), max_length=4)
    assert c.completion == "aaaa" and not c.ended  # id 1 = "a" always wins


# --------------------------------------------------------------------------- losses vs oracles


def _zero_head(model: CharRNN) -> CharRNN:
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
    return model


def test_uniform_predictor_reports_ln_v_exactly():
    words = ["abc", "de", "fghij"]
    vocab = Vocab.build(words, boundary=True)
    x, y = textdata.word_tensors(words, vocab)
    model = _zero_head(CharRNN(CharRNNConfig(vocab_size=len(vocab))))
    loss, count = charrnn.evaluate(model, x, y, batch_size=2, seq_len=4, words=True)
    assert count == sum(len(w) + 1 for w in words)  # every character plus the end token
    assert loss == pytest.approx(math.log(len(vocab)), abs=1e-12)

    text = "the quick brown fox jumps over the lazy dog\n" * 3
    tv = Vocab.build([text], boundary=False)
    ids = torch.tensor(tv.encode(text))
    data = charrnn.Data("text", tv, "-", ids, ids, {})
    vx, vy = charrnn.eval_pairs(data, ids, batch_size=4)
    model = _zero_head(CharRNN(CharRNNConfig(vocab_size=len(tv), cell="lstm", layers=2)))
    loss, count = charrnn.evaluate(model, vx, vy, batch_size=4, seq_len=5, words=False)
    assert count == 4 * ((len(text) - 1) // 4)
    assert loss == pytest.approx(math.log(len(tv)), abs=1e-12)


def test_word_loss_matches_a_step_by_step_loop():
    """Oracle: feed each word one character at a time and add -log p of each next token."""
    torch.manual_seed(1)
    words = ["hello", "hi", "shelf"]
    vocab = Vocab.build(words, boundary=True)
    model = CharRNN(CharRNNConfig(vocab_size=len(vocab), cell="gru", layers=2, hidden=16)).eval()
    x, y = textdata.word_tensors(words, vocab)
    loss, count = charrnn.evaluate(model, x, y, batch_size=2, seq_len=128, words=True)
    total, n = 0.0, 0
    with torch.no_grad():
        for w in words:
            seq = [BOUNDARY, *vocab.encode(w), BOUNDARY]
            hidden = None
            for cur, nxt in itertools.pairwise(seq):
                logits, hidden = model(torch.tensor([[cur]]), hidden)
                total -= float(torch.log_softmax(logits[0, 0].double(), -1)[nxt])
                n += 1
    assert count == n
    assert loss == pytest.approx(total / n, rel=1e-6)


def test_text_loss_carries_state_across_windows():
    """Window-by-window evaluation with the carried state equals one pass over each stream."""
    torch.manual_seed(2)
    text = "to be or not to be, that is the question. " * 4
    vocab = Vocab.build([text], boundary=False)
    ids = torch.tensor(vocab.encode(text))
    model = CharRNN(CharRNNConfig(vocab_size=len(vocab), cell="lstm", hidden=16)).eval()
    data = charrnn.Data("text", vocab, "-", ids, ids, {})
    x, y = charrnn.eval_pairs(data, ids, batch_size=3)
    loss, _ = charrnn.evaluate(model, x, y, batch_size=3, seq_len=7, words=False)
    with torch.no_grad():
        logits, _ = model(x)  # the whole stream at once: no windows
        oracle = F.cross_entropy(logits.reshape(-1, len(vocab)).double(), y.reshape(-1))
    assert loss == pytest.approx(float(oracle), rel=1e-6)


def test_bigram_baseline_matches_hand_counts():
    vocab = Vocab(tuple("ab"), boundary=True)  # ids: <w>=0, a=1, b=2
    train_x, train_y = textdata.word_tensors(["ab", "a"], vocab)
    val = textdata.word_tensors(["b"], vocab)
    loss = charrnn.bigram_loss(3, (train_x, train_y), val, alpha=1.0)
    # training pairs: <w>a, ab, b<w>, <w>a, a<w>; val pairs: <w>b, b<w>
    p_start_b = (0 + 1) / (2 + 3)  # count(<w>,b)=0 of 2 starts, add-one over |V|=3
    p_b_end = (1 + 1) / (1 + 3)
    assert loss == pytest.approx(-(math.log(p_start_b) + math.log(p_b_end)) / 2, rel=1e-12)


# ---------------------------------------------------------------------------------- sampling


def test_sampling_is_reproducible_for_a_seed():
    torch.manual_seed(0)
    vocab = Vocab(tuple("abcdefgh "), boundary=False)
    model = CharRNN(CharRNNConfig(vocab_size=len(vocab)))
    a = sample_text(model, vocab, "ab", 80, Sampling(temperature=1.0, seed=7))
    b = sample_text(model, vocab, "ab", 80, Sampling(temperature=1.0, seed=7))
    c = sample_text(model, vocab, "ab", 80, Sampling(temperature=1.0, seed=8))
    assert a == b and a != c and a.startswith("ab") and len(a) == 82
    greedy = sample_text(model, vocab, "ab", 30, Sampling(temperature=0.0))
    top1 = sample_text(model, vocab, "ab", 30, Sampling(temperature=1.0, top_k=1, seed=3))
    assert greedy == top1  # top-1 sampling is argmax


# ------------------------------------------------------------------------------------- resume


def resume_config(run, **changes) -> TrainConfig:
    """What `charrnn train --resume RUN` continues with: the run's config, this session's time
    limit (none) and the changes given."""
    from cnnlab.config import from_run

    return from_run(TrainConfig, run, "charrnn", {"time_limit": None, **changes})


def _steps_and_losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"]) for r in records if "train_loss" in r]


def test_resume_continues_the_curve_exactly_words(tmp_path):
    words = tuple(f"{a}{b}{c}" for a in "abc" for b in "aeiou" for c in "xyz")[:40]
    base = {
        "words": words,
        "epochs": 4,
        "batch_size": 8,
        "log_every": 1,
        "dropout": 0.2,
        "layers": 2,
        "hidden": 16,
        "val_fraction": 0.2,
    }
    train(TrainConfig(**base), out=tmp_path / "straight")
    train(TrainConfig(**{**base, "epochs": 2}), out=tmp_path / "split")
    cfg = resume_config(tmp_path / "split", epochs=4)
    r = train(cfg, resume=tmp_path / "split")
    straight, resumed = (
        _steps_and_losses(tmp_path / "straight"),
        _steps_and_losses(tmp_path / "split"),
    )
    assert [s for s, _ in resumed] == list(range(1, len(resumed) + 1))  # steps continue
    assert resumed == straight  # and so do the losses, exactly
    assert r["steps"] == 4 * 4 and r["val_loss"] is not None


def test_resume_mid_epoch_text_with_carried_state(tmp_path, monkeypatch):
    text_file = tmp_path / "t.txt"
    text_file.write_text("All the world's a stage, and all the men and women merely players. " * 12)
    base = {
        "text": str(text_file),
        "cell": "lstm",
        "layers": 2,
        "hidden": 16,
        "batch_size": 4,
        "seq_len": 16,
        "epochs": 2,
        "log_every": 1,
        "dropout": 0.1,
        "threads": 1,
    }
    train(TrainConfig(**base), out=tmp_path / "straight")
    # A time limit reached at once stops cleanly after the first step, mid-epoch.
    first = train(TrainConfig(**{**base, "time_limit": 1e-9}), out=tmp_path / "split")
    assert first["steps"] == 1 and first["stopped_by_time_limit"]
    train(resume_config(tmp_path / "split"), resume=tmp_path / "split")
    assert _steps_and_losses(tmp_path / "split") == _steps_and_losses(tmp_path / "straight")
    with pytest.raises(CnnlabError, match="larger --epochs"):
        train(resume_config(tmp_path / "split"), resume=tmp_path / "split")


# ------------------------------------------------------------------------------ text windows


@settings(max_examples=400, deadline=None)
@given(
    n=st.integers(2, 4000),
    batch_size=st.integers(1, 48),
    seq_len=st.integers(1, 160),
    shift_fraction=st.floats(0, 1),
)
def test_text_windows_fit_every_shift(n, batch_size, seq_len, shift_fraction):
    """Oracle: the text is arange(n), so every id is its own position. Every shift the layout
    allows gives `n_steps` full windows inside the text, targets one character ahead, streams
    that never share a character, and wastes less than one window per stream (plus one)."""
    if n - 1 < batch_size * seq_len:  # not one window per stream, whatever the shift
        with pytest.raises(CnnlabError, match="too short"):
            textdata.text_layout(n, batch_size, seq_len)
        return
    layout = textdata.text_layout(n, batch_size, seq_len)
    # The grid shifts by up to seq_len - 1 whenever the text has room for it.
    assert layout.max_shift == (seq_len - 1 if n - seq_len >= batch_size * seq_len else 0)
    shift = round(shift_fraction * layout.max_shift)
    streams = textdata.text_streams(torch.arange(n), layout, shift)
    windows = [textdata.stream_window(streams, k, seq_len) for k in range(layout.n_steps)]
    assert all(x.shape == y.shape == (batch_size, seq_len) for x, y in windows)
    x = torch.cat([w[0] for w in windows], dim=1)  # each stream's inputs, in reading order
    y = torch.cat([w[1] for w in windows], dim=1)
    assert torch.equal(y, x + 1)  # the target is the next character
    starts = shift + layout.per_stream * torch.arange(batch_size)
    assert torch.equal(x, starts[:, None] + torch.arange(layout.n_steps * seq_len))  # contiguous
    assert layout.per_stream >= layout.n_steps * seq_len  # streams are disjoint
    assert int(y.max()) <= n - 1  # all inside the text
    unused = (n - 1) - batch_size * layout.n_steps * seq_len
    assert 0 <= unused < (batch_size + 1) * seq_len


@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 1500), batch_size=st.integers(1, 12), seq_len=st.integers(1, 40),
       seed=st.integers(0, 2**16))
def test_every_epoch_has_the_planned_number_of_steps(n, batch_size, seq_len, seed):
    cfg = TrainConfig(text="-", batch_size=batch_size, seq_len=seq_len, seed=seed)
    data = charrnn.Data("text", Vocab(("a",), False), "-", torch.arange(n), None)
    try:
        planned = charrnn.epoch_steps(data, cfg)
    except CnnlabError:
        assert n - 1 < batch_size * seq_len
        return
    for epoch in range(8):
        batches = charrnn.epoch_batches(data, cfg, epoch)
        assert len(batches) == planned
        assert all(bx.shape == (batch_size, seq_len) for bx, _ in batches)


def test_text_training_with_shifted_epochs_runs_to_the_end(tmp_path):
    """The issue's case: 712 characters, batch 4 × 16, 4 epochs used to end in an IndexError
    (steps counted on epoch 0, a shifted epoch had one window fewer)."""
    text = ("It is a truth universally acknowledged, that a single man in possession "
            "of a good fortune, must be in want of a wife. " * 7)[:712]
    assert len(text) == 712
    f = tmp_path / "t.txt"
    f.write_text(text)
    cfg = TrainConfig(text=str(f), batch_size=4, seq_len=16, epochs=4, hidden=16, layers=1,
                      threads=1)
    r = train(cfg, out=tmp_path / "run")
    # 641 training characters (712 - int(71.2)); shifts up to 15 leave (641 - 1 - 15) // 4 = 156
    # per stream: 156 // 16 = 9 windows, in every epoch.
    assert r["steps"] == 4 * 9 and r["epochs"] == 4


# ---------------------------------------------------------------------------------- bad input


def test_prefix_with_unseen_characters_names_them(tmp_path):
    train(TrainConfig(words=LAB, epochs=2), out=tmp_path / "run")
    model, vocab, _ = load_checkpoint(tmp_path / "run")
    with pytest.raises(CnnlabError, match=r"never saw: 'x', 'Q'") as exc:
        complete(model, vocab, ["h", "xQ", "gx"], Sampling())
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("words", [[], ["", "  "], ["\t"]])
def test_empty_or_blank_word_list_is_refused(words, tmp_path):
    with pytest.raises(CnnlabError, match="no words"):
        train(TrainConfig(words=tuple(words)), out=tmp_path / "run")


@pytest.mark.parametrize("content", [b"", b"  \n\n \t\n"])
@pytest.mark.parametrize("kind", ["words_file", "text"])
def test_empty_or_blank_files_are_refused(content, kind, tmp_path):
    f = tmp_path / "f.txt"
    f.write_bytes(content)
    with pytest.raises(CnnlabError, match=r"no (words|text)"):
        train(TrainConfig(**{kind: str(f)}), out=tmp_path / "run")


def test_non_utf8_text_gives_the_byte_offset_and_encoding_fixes_it(tmp_path):
    f = tmp_path / "latin.txt"
    f.write_bytes("café au lait\n".encode("latin-1") * 20)
    with pytest.raises(CnnlabError, match=r"not valid utf-8: byte offset 3 .*--encoding"):
        train(TrainConfig(text=str(f)), out=tmp_path / "a")
    cfg = TrainConfig(
        text=str(f), encoding="latin-1", batch_size=2, seq_len=8, epochs=1, hidden=8, layers=1
    )
    assert train(cfg, out=tmp_path / "b")["vocab_size"] == len(set("café au lait\n"))


def test_missing_file_and_bad_settings_are_one_line_errors(tmp_path):
    with pytest.raises(CnnlabError, match="not found"):
        train(TrainConfig(text=str(tmp_path / "nope.txt")), out=tmp_path / "r")
    with pytest.raises(CnnlabError, match="exactly one"):
        TrainConfig(words=LAB, text="x")
    with pytest.raises(CnnlabError, match="--cell"):
        TrainConfig(words=LAB, cell="transformer")
    with pytest.raises(CnnlabError, match="no charrnn checkpoint"):
        load_checkpoint(tmp_path)


# ----------------------------------------------------------------------------------- real data


def test_names_split_is_makemores(shared_data):
    # 32,033 names (wc -l says 32,032: the last line has no newline); makemore holds out
    # min(1000, 10%) = 1000 of them.
    cfg = TrainConfig(words_file=str(shared_data("text", "names.txt")))
    data = charrnn.load_data(cfg)
    assert data.counts == {"words": 32033, "train_words": 31033, "val_words": 1000}
    assert len(data.vocab) == 27  # a-z and the boundary token, as in makemore
    _x, y = data.val
    assert int((y == BOUNDARY).sum()) == 1000 and int((y == IGNORE).sum()) > 0


def test_shakespeare_split_is_90_10(shared_data):
    cfg = TrainConfig(text=str(shared_data("text", "tinyshakespeare.txt")))
    data = charrnn.load_data(cfg)
    assert len(data.vocab) == 65
    assert data.counts["characters"] == 1_115_394
    assert data.counts["val_characters"] == 111_539  # int(10%)
    assert data.train.numel() + data.val.numel() == 1_115_394


def test_a_diverged_loss_stops_in_one_line_and_keeps_the_last_good_checkpoint(
        tmp_path, monkeypatch):
    """The engine's NaN guard, which charrnn's own loop lacked: from training step 31 on the
    model's logits are NaN; training stops there with a one-line error, and the checkpoint on
    disk is the one of step 30 (every validation point saves with --save-interval 0)."""
    real = CharRNN.forward
    calls = {"train": 0}

    def forward(self, ids, hidden=None):
        logits, hidden = real(self, ids, hidden)
        if self.training:
            calls["train"] += 1
            if calls["train"] > 30:
                logits = logits * float("nan")
        return logits, hidden

    monkeypatch.setattr(CharRNN, "forward", forward)
    with pytest.raises(CnnlabError, match=r"diverged.*last good checkpoint") as err:
        train(TrainConfig(words=LAB, epochs=100, save_interval=0), out=tmp_path / "run")
    assert "\n" not in str(err.value) and "by step 31" in str(err.value)
    from cnnlab import checkpoints

    assert checkpoints.read_meta(tmp_path / "run", "last")["step"] == 30
