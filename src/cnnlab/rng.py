"""The random number generators a training run depends on: every one of them captured and
restored as one state (torch's CPU and CUDA generators, Python's `random`, NumPy's global
one), so that a run resumed from a checkpoint, or timed on a copy, draws exactly the numbers an
uninterrupted one draws; and the generator that fixes each epoch's order (`epoch_generator`).

The state is made of tensors, ints, floats and strings only: checkpoints load with
`weights_only=True`, which takes no tuples (Python's state goes as its repr and is read back
with `ast.literal_eval`).
"""

from __future__ import annotations

import ast
import random
from typing import Any

import torch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The generator that fixes an epoch's shuffle and augmentation: a function of (seed, epoch)
    only, so every rank draws the same permutation and a resumed run the same batches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


def rng_state() -> dict[str, Any]:
    """Every global generator's state (the `last` checkpoint's "rng")."""
    import numpy as np

    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": repr(random.getstate()),  # repr/eval: weights_only loading takes no tuples
        "numpy": {"key": torch.from_numpy(np_state[1].copy()), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured (CUDA's only where this machine has CUDA)."""
    import numpy as np

    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(_tuples(ast.literal_eval(state["python"])))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy(), n["pos"], n["has_gauss"], n["gauss"]))


def _tuples(x: Any) -> Any:
    return tuple(_tuples(v) for v in x) if isinstance(x, list | tuple) else x
