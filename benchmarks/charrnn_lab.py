"""The lab's task on seeds 0-9: does `cnnlab charrnn` complete h, g, s to hello, green, start,
and how fast? Beside it, in the same run: the lab's original code (one-hot nn.RNN(hidden 12),
Adam 0.01, 100 epochs, words of equal length, no end token) and cnnlab's literal lab flags.

    .venv/bin/python benchmarks/charrnn_lab.py            # prints a Markdown table

Times are wall-clock seconds of training + completing, after imports (torch/timm imports are
paid once per process; the CLI's total is measured separately at the end).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from cnnlab.models.char_rnn import Sampling, complete
from cnnlab.tasks.charrnn import TrainConfig, load_checkpoint, train

WORDS = ("hello", "green", "start")
PREFIXES = ["h", "g", "s", "e", "t"]
SEEDS = range(10)


def lab_original(seed: int) -> tuple[dict[str, str], float]:
    """The lab as written in class: input word[:-1] -> target word[1:], one-hot, no end token,
    completion = feed the prefix and then 4 more greedy characters (every word has 5)."""
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    chars = sorted(set("".join(WORDS)))
    stoi = {c: i for i, c in enumerate(chars)}
    v = len(chars)
    rnn, fc = nn.RNN(v, 12, batch_first=True), nn.Linear(12, v)
    opt = torch.optim.Adam([*rnn.parameters(), *fc.parameters()], lr=0.01)
    x = torch.nn.functional.one_hot(torch.tensor([[stoi[c] for c in w[:-1]] for w in WORDS]), v)
    y = torch.tensor([[stoi[c] for c in w[1:]] for w in WORDS])
    for _ in range(100):
        out, _ = rnn(x.float())
        loss = nn.functional.cross_entropy(fc(out).reshape(-1, v), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
    result = {}
    with torch.no_grad():
        for p in PREFIXES:
            word, h = p, None
            inp = torch.nn.functional.one_hot(torch.tensor([[stoi[p]]]), v).float()
            for _ in range(4):
                out, h = rnn(inp, h)
                i = int(fc(out)[0, -1].argmax())
                word += chars[i]
                inp = torch.nn.functional.one_hot(torch.tensor([[i]]), v).float()
            result[p] = word
    return result, time.perf_counter() - t0


def cnnlab_run(seed: int, tmp: Path, **overrides) -> tuple[dict[str, str], float]:
    t0 = time.perf_counter()
    out = tmp / f"{'-'.join(f'{k}{v}' for k, v in overrides.items())}-{seed}"
    train(TrainConfig(words=WORDS, seed=seed, **overrides), out=out)
    model, vocab, _ = load_checkpoint(out)
    comps = complete(model, vocab, PREFIXES, Sampling())
    return {c.prefix: c.completion for c in comps}, time.perf_counter() - t0


def summarise(name: str, runs: list[tuple[dict[str, str], float]]) -> list[str]:
    ok = sum(r["h"] == "hello" and r["g"] == "green" and r["s"] == "start" for r, _ in runs)
    times = [t for _, t in runs]
    e = sorted({r["e"] for r, _ in runs})
    t = sorted({r["t"] for r, _ in runs})
    return [
        f"| {name} | {ok}/{len(runs)} | {statistics.median(times):.2f} | {max(times):.2f} "
        f"| {', '.join(e)} | {', '.join(t)} |"
    ]


def main() -> None:
    torch.set_num_threads(1)  # what `cnnlab charrnn` word mode uses by default
    print(f"load average before: {os.getloadavg()}")
    rows = [
        "| setup | h,g,s → hello,green,start | median s | max s | e → | t → |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows += summarise("lab original (plain PyTorch loop)", [lab_original(s) for s in SEEDS])
        rows += summarise(
            "cnnlab defaults (GRU 64, embedding)", [cnnlab_run(s, tmp) for s in SEEDS]
        )
        literal = {
            "one_hot": True,
            "cell": "rnn",
            "hidden": 12,
            "lr": 0.01,
            "epochs": 100,
            "clip": 0.0,
        }
        rows += summarise(
            "cnnlab literal lab flags", [cnnlab_run(s, tmp, **literal) for s in SEEDS]
        )
        # The whole CLI, as a user runs it: process start + imports + train + complete.
        cli = [sys.executable, "-m", "cnnlab", "charrnn"]
        walls = []
        for s in range(3):
            t0 = time.perf_counter()
            run = tmp / f"cli{s}"
            subprocess.run(
                [*cli, "train", "--words", *WORDS, "--seed", str(s), "--out", str(run), "-q"],
                check=True,
                capture_output=True,
            )
            subprocess.run([*cli, "complete", str(run), *PREFIXES], check=True, capture_output=True)
            walls.append(time.perf_counter() - t0)
    print("\n".join(rows))
    print(
        f"CLI train + complete, 2 processes, seeds 0-2: median {statistics.median(walls):.1f} s "
        f"(max {max(walls):.1f} s)"
    )
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
