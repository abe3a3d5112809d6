"""`cnnlab.charrnn`: character-level RNN / GRU / LSTM, as `cnnlab charrnn train|complete|sample`.

    run = cnnlab.charrnn.train(words=["hello", "green", "start"], out="runs/words")
    cnnlab.charrnn.complete(run.run_dir, ["h", "g", "s"]).table
    cnnlab.charrnn.sample(run.run_dir, num=5).words
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from cnnlab.api._support import Resumable, given, names, reporter, result, resumed
from cnnlab.errors import CnnlabError

# --time-limit is this session's training time: a resume does not inherit the last one.
TRAIN_RESUME = Resumable(allowed=("epochs", "time_limit", "threads"),
                         per_invocation=("time_limit",))

# TrainConfig's fields that train() passes on (the rest of its keywords say where and how).
TRAIN_KEYS = ("words", "words_file", "text", "lines", "encoding", "val_fraction",
              "val_max_words", "split_seed", "cell", "layers", "hidden", "embedding", "one_hot",
              "dropout", "epochs", "lr", "batch_size", "seq_len", "clip", "weight_decay",
              "schedule", "time_limit", "save_interval", "eval_every", "log_every", "seed",
              "threads")


def train(*, words: Sequence[str] | None = None, words_file: str | Path | None = None,
          text: str | Path | None = None, lines: bool | None = None,
          encoding: str | None = None, val_fraction: float | None = None,
          val_max_words: int | None = None, split_seed: int | None = None,
          cell: str | None = None, layers: int | None = None, hidden: int | None = None,
          embedding: int | None = None, one_hot: bool | None = None,
          dropout: float | None = None, epochs: int | None = None, lr: float | None = None,
          batch_size: int | None = None, seq_len: int | None = None,
          clip: float | None = None, weight_decay: float | None = None,
          schedule: str | None = None, time_limit: float | None = None,
          save_interval: float | None = None, eval_every: int | None = None,
          log_every: int | None = None, seed: int | None = None, threads: int | None = None,
          config: str | Path | None = None, out: str | Path | None = None,
          quiet: bool = False, resume: str | Path | None = None):
    """Train a character model (`cnnlab charrnn train`) on exactly one of: words (the lab's
    ["hello", "green", "start"]), words_file (one word per line, e.g. names.txt) or text
    (running text, e.g. tinyshakespeare.txt).

    cell: "rnn", "gru" (default) or "lstm"; one_hot=True with cell="rnn", hidden=12, lr=0.01,
    epochs=100 is the lab exactly. None takes the mode's default (words: 100 epochs, lr 0.01;
    text: 10 epochs, lr 0.002), or config= (YAML). resume=RUN continues a run up to epochs=.

    Returns a Result: `.table` losses (nats and bits per character) beside the bigram and
    uniform baselines, `.completions` (word mode), `.figures` (loss curve), `.run_dir` (give it
    to complete() and sample()).
    """
    from cnnlab.config import resolve
    from cnnlab.dist import open_run
    from cnnlab.report.charrnn import loss_rows
    from cnnlab.tasks import charrnn as task
    from cnnlab.tasks import run_task

    settings = dict(locals())
    rep = reporter(quiet)
    if resume:
        cfg = resumed(task.TrainConfig, "charrnn", resume, given(train, settings), TRAIN_RESUME)
        run_dir = open_run("charrnn", None, resume=resume)
        results = task.run(cfg, run_dir, rep, resume=True)
    else:
        values = {k: settings[k] for k in TRAIN_KEYS}
        values["words"] = names(words)
        for k in ("words_file", "text"):
            if values[k] is not None:
                values[k] = str(values[k])
        cfg = resolve(task.TrainConfig, values, config)
        run_dir = open_run("charrnn", out)
        results = run_task(task.run, cfg, run_dir, rep)
    return result("charrnn train", results, loss_rows(results), run_dir.path,
                  title=f"character {results.get('cell', 'RNN')}: {results['steps']} steps")


def _sampling(temperature: float | None, default: float, top_k: int | None, seed: int):
    from cnnlab.models.char_rnn import Sampling

    return Sampling(temperature=default if temperature is None else temperature, top_k=top_k,
                    seed=seed)


def complete(checkpoint: str | Path, prefixes: Sequence[str] | str, *, max_length: int = 30,
             temperature: float | None = None, top_k: int | None = None, seed: int = 0,
             quiet: bool = False):
    """Complete word prefixes with a word-mode model (`cnnlab charrnn complete`).

    checkpoint: the run directory of charrnn.train. temperature: 0 (greedy, the default here)
    or sample from softmax(logits / T); top_k: sample among the k likeliest characters.

    Returns a Result: `.table` prefix, completion, probability, ended (False: cut at
    max_length); `.completions` the same as dicts. Writes no run directory.
    """
    from cnnlab.models.char_rnn import complete as run_complete
    from cnnlab.tasks.charrnn import load_checkpoint

    if max_length < 1:
        raise CnnlabError("--max-length must be at least 1")
    how = _sampling(temperature, 0.0, top_k, seed)
    model, vocab, _ = load_checkpoint(checkpoint)
    comps = run_complete(model, vocab, list(names(prefixes)), how, max_length=max_length)
    rows = [{"prefix": c.prefix, "completion": c.completion, "probability": c.probability,
             "ended": c.ended} for c in comps]
    return result("charrnn complete", {"completions": rows}, rows,
                  title=f"completions by {Path(checkpoint).name}")


def sample(checkpoint: str | Path, *, prompt: str = "", length: int = 500, num: int = 10,
           temperature: float | None = None, top_k: int | None = None, seed: int = 0,
           quiet: bool = False):
    """Write text, or words, from a checkpoint (`cnnlab charrnn sample`).

    A word model writes num words starting with prompt (word i is the same whatever num); a
    text model writes length characters after prompt. temperature: 1 by default here.

    Returns a Result: `.words` (word models) or `.text` (text models); `.table` the words, or
    the text as one row.
    """
    from dataclasses import replace

    from cnnlab.models.char_rnn import complete as run_complete
    from cnnlab.models.char_rnn import sample_text
    from cnnlab.tasks.charrnn import load_checkpoint

    how = _sampling(temperature, 1.0, top_k, seed)
    model, vocab, _ = load_checkpoint(checkpoint)
    if vocab.boundary:
        if num < 1:
            raise CnnlabError("--num must be at least 1")
        # One generator stream per word, derived from the seed: word i is the same whatever num.
        found = [run_complete(model, vocab, [prompt], replace(how, seed=how.seed * 100_003 + i))[0]
                 for i in range(num)]
        words = [c.completion for c in found]
        return result("charrnn sample", {"words": words}, [{"word": w} for w in words],
                      title=f"words by {Path(checkpoint).name}")
    text = sample_text(model, vocab, prompt, length, how)
    return result("charrnn sample", {"text": text}, [{"text": text}],
                  title=f"text by {Path(checkpoint).name}")
