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
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.nn import functional as F

# L2 strengths tried, per unit of mean cross-entropy on scaled features: 1e-4 (nearly the
# separating hyperplane; with D >> n the training loss still goes near 0) to 1 (weights held
# near zero). Decade steps: on 80-100 photos of Lite0 features, half-decade steps moved the CV
# accuracy of the chosen l2 by under one photo, and cost twice the fits (~30 ms each).
L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MAX_FOLDS = 5  # k of k-fold; fewer when the smallest class has fewer photos
MAX_ITER = 500  # L-BFGS iterations per fit; the fits here converge in 20-200


@dataclass
class LinearHead:
    weight: torch.Tensor  # (C, D), on raw features
    bias: torch.Tensor  # (C,)
    loss: float  # the objective reached (scaled space, as minimised)
    iterations: int

    def logits(self, x: torch.Tensor) -> torch.Tensor:
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


def objective(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor,
              l2: float) -> torch.Tensor:
    """Mean cross-entropy of x @ w.T + b plus l2 / 2 * ||w||^2."""
    return F.cross_entropy(x @ w.T + b, y) + 0.5 * l2 * (w * w).sum()


@dataclass
class Scaled:
    """Rows ready for the solver: x centred and divided by its RMS (`fit_linear`), and, with
    fewer rows than features, expressed in the basis of their span (`z = xs @ basis.T`)."""

    z: torch.Tensor  # (n, r) float64
    basis: torch.Tensor | None  # (r, D) orthonormal rows; None: z is xs itself
    mean: torch.Tensor  # (D,)
    std: torch.Tensor  # (D,), one value repeated


def scaled(x: torch.Tensor, scale: bool = True) -> Scaled:
    """`x` as the solver sees it (float64); computed once per set of rows, for every l2."""
    x = x.double()
    mean = x.mean(0) if scale else torch.zeros(x.shape[1], dtype=x.dtype)
    # One number for every feature (see the module's docstring); 1 for constant rows.
    rms = float((x - mean).pow(2).mean().sqrt()) if scale else 1.0
    std = torch.full_like(mean, rms if rms > 1e-12 else 1.0)
    xs = (x - mean) / std
    # With fewer photos than features (the few-shot case: 100 x 1280), the optimal weights lie
    # in the span of the rows (any component orthogonal to them changes no logit and only adds
    # penalty), so the problem is solved exactly in that r <= n dimensional span: xs = U S Vh,
    # z = U S, w = w_z Vh. Same objective, same optimum, ~D/n times cheaper iterations.
    basis = None
    if xs.shape[0] < xs.shape[1]:
        u, sv, basis = torch.linalg.svd(xs, full_matrices=False)
        keep = sv > sv.max() * 1e-10 if len(sv) else sv > 0
        xs, basis = u[:, keep] * sv[keep], basis[keep]
    return Scaled(xs.contiguous(), basis, mean, std)


def fit_linear(x: torch.Tensor, y: torch.Tensor, n_classes: int, l2: float, *,
               scale: bool = True, init: tuple | None = None,
               max_iter: int = MAX_ITER) -> LinearHead:
    """Minimise `objective` by full-batch L-BFGS (strong Wolfe line search), in float64, on
    x centred and divided by its RMS (`scale`), or on x as it is. `init`: a previous head's
    `scaled` weights (a warm start)."""
    rows = scaled(x, scale)
    if init is not None and rows.basis is not None:  # warm start, projected onto this span
        init = (init[0] @ rows.basis.T, init[1])
    return fit_scaled(rows, y, n_classes, l2, init=init, max_iter=max_iter)


def fit_scaled(rows: Scaled, y: torch.Tensor, n_classes: int, l2: float, *,
               init: tuple | None = None, max_iter: int = MAX_ITER) -> LinearHead:
    """`fit_linear` on rows already scaled; `init`: a previous fit's `solved` weights on the
    same rows (a warm start)."""
    if init is None:
        w = torch.zeros(n_classes, rows.z.shape[1], dtype=rows.z.dtype)
        b = torch.zeros(n_classes, dtype=rows.z.dtype)
    else:
        w, b = init[0].contiguous().clone(), init[1].clone()
    w, b, loss, iterations = _lbfgs(rows.z, y, w, b, l2, max_iter)
    solved = (w, b)
    if rows.basis is not None:  # back to one weight per (scaled) feature
        w = w @ rows.basis
    head = LinearHead(w / rows.std, b - (w / rows.std) @ rows.mean, loss, iterations)
    head.scaled = (w, b)  # type: ignore[attr-defined]  # for warm starts (fit_linear)
    head.solved = solved  # type: ignore[attr-defined]  # for warm starts (fit_scaled)
    return head


def _lbfgs(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor, l2: float,
           max_iter: int) -> tuple[torch.Tensor, torch.Tensor, float, int]:
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
    zn = z.numpy()
    onehot = np.zeros((n, c))
    onehot[np.arange(n), y.numpy()] = 1.0

    def loss_and_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        wt, bt = theta[:-c].reshape(w.shape), theta[-c:]
        s = zn @ wt.T + bt
        s -= s.max(1, keepdims=True)
        logp = s - np.log(np.exp(s).sum(1, keepdims=True))
        loss = float(-(logp * onehot).sum() / n + 0.5 * l2 * (wt * wt).sum())
        g = (np.exp(logp) - onehot) / n
        return loss, np.concatenate([(g.T @ zn + l2 * wt).ravel(), g.sum(0)])

    # gtol: torch's tolerance_grad (max |gradient|); ftol: the relative change of the loss
    # (torch's tolerance_change was 1e-12 absolute, at losses of 1e-4 to 2).
    start = torch.cat([w.flatten(), b]).numpy()
    res = minimize(loss_and_grad, start, jac=True, method="L-BFGS-B",
                   options={"maxiter": max_iter, "maxcor": 20, "gtol": 1e-9, "ftol": 1e-13})
    theta = torch.from_numpy(res.x.copy())
    return theta[:-c].view(w.shape), theta[-c:], float(res.fun), int(res.nit)


@contextlib.contextmanager
def one_thread():
    """torch and the BLAS under SciPy on one thread inside the block: the head's fits are tiny
    matrix products and vector updates, where a second thread only adds synchronisation. On
    this shared 2-core machine under load, two threads made the same fits 10-30x slower (torch)
    and 5-20x slower (SciPy's OpenBLAS inside L-BFGS-B); issue 27's notes, BENCHMARKS.md."""
    import scipy.optimize  # noqa: F401  # loads SciPy's BLAS: threadpoolctl limits loaded ones only
    from threadpoolctl import threadpool_limits

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        torch.set_num_threads(before)


def stratified_folds(y: torch.Tensor, folds: int, seed: int) -> torch.Tensor:
    """A fold index per row: each class's rows shuffled (seeded) and dealt round-robin, the
    dealing continuing from class to class so that fold sizes differ by at most one."""
    g = torch.Generator().manual_seed(seed)
    fold_of = torch.empty(len(y), dtype=torch.long)
    start = 0
    for c in torch.unique(y).tolist():
        rows = (y == c).nonzero().flatten()
        rows = rows[torch.randperm(len(rows), generator=g)]
        fold_of[rows] = (torch.arange(len(rows)) + start) % folds
        start += len(rows)
    return fold_of


def n_folds(y: torch.Tensor) -> int:
    """k of k-fold: MAX_FOLDS, at most the smallest class's count (every class in every
    training fold); 0 when a class has a single photo (nothing to hold out)."""
    smallest = int(torch.bincount(y).min()) if len(y) else 0
    k = min(MAX_FOLDS, smallest)
    return k if k >= 2 else 0


def cross_validate(x: torch.Tensor, y: torch.Tensor, n_classes: int, folds: int, seed: int = 0,
                   grid: tuple[float, ...] = L2_GRID) -> list[dict]:
    """Per l2 of `grid`: held-out mean log-loss and accuracy (percent) over `folds` folds."""
    with one_thread():
        return _cross_validate(x, y, n_classes, folds, seed, grid)


def _cross_validate(x: torch.Tensor, y: torch.Tensor, n_classes: int, folds: int, seed: int,
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
            nll[l2] += float(F.cross_entropy(logits, y[held], reduction="sum"))
            right[l2] += int((logits.argmax(1) == y[held]).sum())
    n = len(y)
    return [{"l2": l2, "cv_log_loss": nll[l2] / n, "cv_accuracy": 100.0 * right[l2] / n}
            for l2 in grid]


def problem_digest(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int,
                   grid: tuple[float, ...] = L2_GRID) -> str:
    """SHA-256 of everything `cross_validate` depends on: the rows (float32, in order), their
    classes, the seed of the folds and the grid. Equal digests, equal tables (`select_and_fit`'s
    `known`: the table `--model auto` computed for the chosen backbone is not computed again)."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps({"n_classes": n_classes, "seed": seed, "grid": list(grid),
                                   "folds": n_folds(y), "shape": list(x.shape)}).encode())
    h.update(x.detach().float().contiguous().numpy().tobytes())
    h.update(y.detach().long().contiguous().numpy().tobytes())
    return h.hexdigest()


def select_and_fit(x: torch.Tensor, y: torch.Tensor, n_classes: int, seed: int = 0,
                   grid: tuple[float, ...] = L2_GRID, default_l2: float = 1e-2,
                   known: list[dict] | None = None) -> HeadChoice:
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
