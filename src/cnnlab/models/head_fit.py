"""A linear head on frozen features, fitted the way small-data linear classifiers are fitted.

With the body frozen the head is multinomial logistic regression on fixed feature vectors: a
convex problem with one optimum per regularisation strength. So instead of a fixed number of
AdamW epochs (which stop wherever the schedule ends) it is solved to convergence, full batch,
by L-BFGS, and the only real choice -- how strongly to pull the weights to zero -- is made by
stratified k-fold cross-validation, as scikit-learn's LogisticRegressionCV does.

    choice = select_and_fit(x, y, n_classes)      # x: (n, D) features, y: (n,) class indices
    choice.head.weight, choice.head.bias          # for nn.Linear(D, n_classes), raw features
    choice.table                                  # per L2 strength: CV log-loss and accuracy

Objective (per fit): mean cross-entropy + l2 / 2 * ||W||^2 (bias not penalised), on features
centred and divided by ONE number, their root-mean-square (so that one grid of l2 suits every
backbone); the weights returned are mapped back to raw features, so the head is an ordinary
nn.Linear on the body's output. Not per-feature standardisation: that blows up the many
near-constant, noisy feature dimensions to the same scale as the informative ones, and on
few-shot draws of hymenoptera (Lite0 features, 2 x (k + 2) photos, 20 draws) it raised the
held-out error from 6.3% to 22.1% at k = 3 and from 5.0% to 9.4% at k = 8 (BENCHMARKS.md).
Centring changes nothing (the unpenalised bias absorbs it) but conditioning.
scikit-learn's LogisticRegression(C) minimises C * sum(cross-entropy) + ||W||^2 / 2: the same
problem with l2 = 1 / (C * n).

Cost (issue 27): the solver is SciPy's L-BFGS-B on the closed-form gradient, one thread, and a
CV fold's rows are scaled and projected once for all its l2 values: 25 fits of 80 x 1280 Lite
features cost 0.3-0.6 CPU-s (torch.optim.LBFGS with autograd: 2.3-3.7 on one thread, 46-61 on
two, all on the shared 2-core AMX Xeon at load ~6). `--model auto` hands the chosen backbone's
table to `select_and_fit` (`known`).

Arrays (issue 27 item 4): the arithmetic is numpy's (float64) whatever the rows are, so that
finetune's default on ONNX Runtime fits its head without importing torch and a run with torch
gets the very same head. Rows given as torch tensors get torch tensors back (heads, folds), rows
given as numpy arrays get numpy. The folds' shuffles are torch.randperm's, drawn from torch's
own generator (`_Mt19937Perm`: the same Mersenne Twister and Fisher-Yates, checked against
torch in tests/test_finetune_fast.py), so the folds are the same with or without torch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cnnlab.hardware import torch_loaded

# L2 strengths tried, per unit of mean cross-entropy on scaled features: 1e-4 (nearly the
# separating hyperplane; with D >> n the training loss still goes near 0) to 1 (weights held
# near zero). Decade steps: on 80-100 photos of Lite0 features, half-decade steps moved the CV
# accuracy of the chosen l2 by under one photo, and cost twice the fits (~30 ms each).
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MAX_FOLDS = 5  # k of k-fold; fewer when the smallest class has fewer photos
MAX_ITER = 500  # L-BFGS iterations per fit; the fits here converge in 20-200


@dataclass
class LinearHead:
    weight: Any  # (C, D), on raw features: float64, numpy or torch as the rows were given
    bias: Any  # (C,)
    loss: float  # the objective reached (scaled space, as minimised)
    iterations: int

    def logits(self, x):
        if isinstance(self.weight, np.ndarray):
            return _np(x).astype(self.weight.dtype) @ self.weight.T + self.bias
        return x.to(self.weight.dtype) @ self.weight.T + self.bias


@dataclass
class HeadChoice:
    l2: float  # the strength chosen (lowest CV log-loss; ties: the stronger)
    folds: int  # 0: too few photos per class to cross-validate, the default l2 was used
    head: LinearHead  # refitted on every row given, with l2
    table: list[dict] = field(default_factory=list)  # per l2: cv_log_loss, cv_accuracy

    @property
    def best(self) -> dict | None:
        return next((r for r in self.table if r["l2"] == self.l2), None)


def _is_torch(x) -> bool:
    """Whether `x` is a torch tensor (asked without importing torch)."""
    return type(x).__module__.startswith("torch")


def _np(x) -> np.ndarray:
    """`x` as a numpy array (a torch tensor's CPU values, no copy where none is needed)."""
    return x.detach().cpu().numpy() if _is_torch(x) else np.asarray(x)


def _like(a: np.ndarray, template):
    """`a` as a torch tensor when `template` is one, else as it is."""
    if not _is_torch(template):
        return a
    import torch

    return torch.from_numpy(np.ascontiguousarray(a))


def objective(w, b, x, y, l2: float):
    """Mean cross-entropy of x @ w.T + b plus l2 / 2 * ||w||^2 (torch tensors)."""
    from torch.nn import functional as F

    return F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()


@dataclass
class Scaled:
    """Rows ready for the solver: x centred and divided by its RMS (`fit_linear`), and, with
    fewer rows than features, expressed in the basis of their span (`z = xs @ basis.T`)."""

    z: np.ndarray  # (n, r) float64
    basis: np.ndarray | None  # (r, D) orthonormal rows; None: z is xs itself
    mean: np.ndarray  # (D,)
    std: np.ndarray  # (D,), one value repeated


def scaled(x, scale: bool = True) -> Scaled:
    """`x` as the solver sees it (float64); computed once per set of rows, for every l2."""
    x = _np(x).astype(np.float64)
    mean = x.mean(0) if scale else np.zeros(x.shape[1], dtype=x.dtype)
    # One number for every feature (see the module's docstring); 1 for constant rows.
    rms = float(np.sqrt(((x - mean) ** 2).mean())) if scale else 1.0
    std = np.full_like(mean, rms if rms > 1e-12 else 1.0)
    xs = (x - mean) / std
    # With fewer photos than features (the few-shot case: 100 x 1280), the optimal weights lie
    # in the span of the rows (any component orthogonal to them changes no logit and only adds
    # penalty), so the problem is solved exactly in that r <= n dimensional span: xs = U S Vh,
    # z = U S, w = w_z Vh. Same objective, same optimum, ~D/n times cheaper iterations.
    basis = None
    if xs.shape[0] < xs.shape[1]:
        u, sv, basis = np.linalg.svd(xs, full_matrices=False)
        keep = sv > sv.max() * 1e-10 if len(sv) else sv > 0
        xs, basis = u[:, keep] * sv[keep], basis[keep]
    return Scaled(np.ascontiguousarray(xs), basis, mean, std)


def fit_linear(x, y, n_classes: int, l2: float, *, scale: bool = True,
               init: tuple | None = None, max_iter: int = MAX_ITER) -> LinearHead:
    """Minimise `objective` by full-batch L-BFGS (strong Wolfe line search), in float64, on
    x centred and divided by its RMS (`scale`), or on x as it is. `init`: a previous head's
    `scaled` weights (a warm start)."""
    rows = scaled(x, scale)
    if init is not None:
        init = (_np(init[0]), _np(init[1]))
        if rows.basis is not None:  # warm start, projected onto this span
            init = (init[0] @ rows.basis.T, init[1])
    return fit_scaled(rows, y, n_classes, l2, init=init, max_iter=max_iter, like=x)


def fit_scaled(rows: Scaled, y, n_classes: int, l2: float, *, init: tuple | None = None,
               max_iter: int = MAX_ITER, like=None) -> LinearHead:
    """`fit_linear` on rows already scaled; `init`: a previous fit's `solved` weights on the
    same rows (a warm start). `like`: the rows as given (torch in, torch out)."""
    if init is None:
        w = np.zeros((n_classes, rows.z.shape[1]), dtype=rows.z.dtype)
        b = np.zeros(n_classes, dtype=rows.z.dtype)
    else:
        w, b = np.array(_np(init[0]), dtype=rows.z.dtype), np.array(_np(init[1]),
                                                                     dtype=rows.z.dtype)
    w, b, loss, iterations = _lbfgs(rows.z, _np(y), w, b, l2, max_iter)
    solved = (w, b)
    if rows.basis is not None:  # back to one weight per (scaled) feature
        w = w @ rows.basis
    head = LinearHead(_like(w / rows.std, like), _like(b - (w / rows.std) @ rows.mean, like),
                      loss, iterations)
    head.scaled = (_like(w, like), _like(b, like))  # type: ignore[attr-defined]  # fit_linear
    head.solved = solved  # type: ignore[attr-defined]  # for warm starts (fit_scaled)
    return head


def _lbfgs(z: np.ndarray, y: np.ndarray, w: np.ndarray, b: np.ndarray, l2: float,
           max_iter: int) -> tuple[np.ndarray, np.ndarray, float, int]:
    """`objective` minimised from (w, b) by SciPy's L-BFGS-B (history 20), its gradient in
    closed form: d/dlogits of the mean cross-entropy is (softmax - onehot) / n.
    Not torch.optim.LBFGS with autograd: on these tiny problems (~100 x 100, 10 classes) each
    iteration is dozens of microsecond-sized tensor ops plus a backward graph: ~0.1 CPU-s per
    fit on one thread, and on two threads of a loaded machine 10-30x that (the 75 fits of
    `--model auto`'s scoring took 155 of a run's 190 CPU-s; issue 27). Here ~20 ms per fit.
    The same convex objective from the same start: the same optimum to the tolerances (tests:
    scikit-learn's loss within 1e-7). The caller holds the BLAS to one thread (`one_thread`)."""
    from scipy.optimize import minimize

    n, c = len(y), w.shape[0]
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y] = 1.0

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        wt, bt = theta[:-c].reshape(w.shape), theta[-c:]
        s = z @ wt.T + bt
        s -= s.max(1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        loss = float(-(logp * onehot).sum() / n + 0.5 * l2 * (wt * wt).sum())
        g = (np.exp(logp) - onehot) / n
        return loss, np.concatenate([(g.T @ z + l2 * wt).ravel(), g.sum(0)])

    # gtol: torch's tolerance_grad (max |gradient|); ftol: the relative change of the loss
    # (torch's tolerance_change was 1e-12 absolute, at losses of 1e-4 to 2).
    start = np.concatenate([w.ravel(), b])
    res = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "maxcor": 20, "gtol": 1e-9, "ftol": 1e-13})
    theta = res.x.copy()
    return theta[:-c].reshape(w.shape), theta[-c:], float(res.fun), int(res.nit)


@contextlib.contextmanager
def one_thread():
    """torch (when loaded) and the BLAS under SciPy on one thread inside the block: the head's
    fits are tiny matrix products and vector updates, where a second thread only adds
    synchronisation. On this shared 2-core machine under load, two threads made the same fits
    10-30x slower (torch) and 5-20x slower (SciPy's OpenBLAS inside L-BFGS-B); issue 27's
    notes, BENCHMARKS.md. torch is not imported for it: without torch there is nothing to set."""
    import scipy.optimize  # noqa: F401  # loads SciPy's BLAS: threadpoolctl limits loaded ones only
    from threadpoolctl import threadpool_limits

    torch = None
    if torch_loaded():
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        if torch is not None:
            torch.set_num_threads(before)


class _Mt19937Perm:
    """torch.randperm on the CPU from `torch.Generator().manual_seed(seed)`, without torch: the
    generator is the standard 32-bit Mersenne Twister seeded by init_genrand (seed & 0xffffffff:
    at::mt19937), and randperm (aten/src/ATen/native/TensorFactories.cpp, randperm_cpu, n below
    2^32 / 20) swaps r[i] with r[i + random() % (n - i)] for i = 0 .. n - 2. numpy's legacy
    MT19937 seeding is the same init_genrand, its `random_raw` the same 32-bit outputs."""

    def __init__(self, seed: int):
        self._bits = np.random.MT19937()
        self._bits._legacy_seeding(seed & 0xFFFFFFFF)

    def randperm(self, n: int) -> np.ndarray:
        r = np.arange(n, dtype=np.int64)
        draws = self._bits.random_raw(n - 1).tolist() if n > 1 else []
        for i, z in enumerate(draws):
            j = i + z % (n - i)
            r[i], r[j] = r[j], r[i]
        return r


def stratified_folds(y, folds: int, seed: int):
    """A fold index per row: each class's rows shuffled (seeded) and dealt round-robin, the
    dealing continuing from class to class so that fold sizes differ by at most one."""
    labels = _np(y)
    perm = _Mt19937Perm(seed)
    fold_of = np.empty(len(labels), dtype=np.int64)
    start = 0
    for c in np.unique(labels).tolist():
        rows = np.flatnonzero(labels == c)
        rows = rows[perm.randperm(len(rows))]
        fold_of[rows] = (np.arange(len(rows)) + start) % folds
        start += len(rows)
    return _like(fold_of, y)


def n_folds(y) -> int:
    """k of k-fold: MAX_FOLDS, at most the smallest class's count (every class in every
    training fold); 0 when a class has a single photo (nothing to hold out)."""
    labels = _np(y)
    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    k = min(MAX_FOLDS, smallest)
    return k if k >= 2 else 0


def cross_validate(x, y, n_classes: int, folds: int, seed: int = 0,
                   grid: tuple[float, ...] = L2_GRID) -> list[dict]:
    """Per l2 of `grid`: held-out mean log-loss and accuracy (percent) over `folds` folds."""
    with one_thread():
        return _cross_validate(_np(x), _np(y), n_classes, folds, seed, grid)


def _cross_validate(x: np.ndarray, y: np.ndarray, n_classes: int, folds: int, seed: int,
                    grid: tuple[float, ...]) -> list[dict]:
    fold_of = stratified_folds(y, folds, seed)
    order = sorted(grid, reverse=True)  # strong to weak: each fit warm-starts the next
    nll = {l2: 0.0 for l2 in grid}
    right = {l2: 0 for l2 in grid}
    for f in range(folds):
        fit_rows, held = fold_of != f, fold_of == f
        rows = scaled(x[fit_rows])  # once per fold, not per l2 (its SVD was 1/4 of the CV)
        init = None
        for l2 in order:
            head = fit_scaled(rows, y[fit_rows], n_classes, l2, init=init)
            init = head.solved  # type: ignore[attr-defined]
            logits = head.logits(x[held])
            nll[l2] += _summed_cross_entropy(logits, y[held])
            right[l2] += int((logits.argmax(1) == y[held]).sum())
    n = len(y)
    return [{"l2": l2, "cv_log_loss": nll[l2] / n, "cv_accuracy": 100.0 * right[l2] / n}
            for l2 in grid]


def _summed_cross_entropy(logits: np.ndarray, y: np.ndarray) -> float:
    """sum over rows of -log softmax(logits)[y] (F.cross_entropy(reduction="sum")), float64."""
    s = logits - logits.max(1, keepdims=True)
    logp = s - np.log(np.exp(s).sum(1, keepdims=True))
    return float(-logp[np.arange(len(y)), y].sum())


def problem_digest(x, y, n_classes: int, seed: int,
                   grid: tuple[float, ...] = L2_GRID) -> str:
    """SHA-256 of everything `cross_validate` depends on: the rows (float32, in order), their
    classes, the seed of the folds and the grid. Equal digests, equal tables (`select_and_fit`'s
    `known`: the table `--model auto` computed for the chosen backbone is not computed again).
    The same digest for the same values as numpy arrays or torch tensors."""
    import hashlib
    import json

    x, y = _np(x), _np(y)
    h = hashlib.sha256(json.dumps({"n_classes": n_classes, "seed": seed, "grid": list(grid),
                                   "folds": n_folds(y), "shape": list(x.shape)}).encode())
    h.update(np.ascontiguousarray(x, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(y, dtype=np.int64).tobytes())
    return h.hexdigest()


def select_and_fit(x, y, n_classes: int, seed: int = 0, grid: tuple[float, ...] = L2_GRID,
                   default_l2: float = 1e-2, known: list[dict] | None = None) -> HeadChoice:
    """l2 by cross-validation on (x, y), then the head refitted on all of (x, y) with it.
    `known`: `cross_validate`'s table for exactly these arguments (`problem_digest`), used as
    it is instead of being computed again."""
    folds = n_folds(y)
    if known is not None:
        table = [dict(r) for r in known]
    else:
        table = cross_validate(x, y, n_classes, folds, seed, grid) if folds else []
    if table:
        best = min(table, key=lambda r: (round(r["cv_log_loss"], 9), -r["l2"]))
        l2 = best["l2"]
    else:
        l2 = default_l2
    with one_thread():
        return HeadChoice(l2, folds, fit_linear(x, y, n_classes, l2), table)
