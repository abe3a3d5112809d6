"""`cnnlab finetune`'s defaults without repeated or wasted work (issue 27, the finetune half):
the head's fits on one thread, the chosen backbone's cross-validation taken from --model auto's
scoring instead of run twice, and the candidates' PyTorch nets not built for a cached graph.
Each test checks the result against the slow path it replaces (the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cnnlab.models import backbone_choice, head_fit
from cnnlab.models.registry import PretrainedNet
from cnnlab.progress import Reporter
from test_finetune import BACKBONE, WORSE, make_photos, train_default, useless_weights, weights

__all__ = ["useless_weights", "weights"]  # fixtures, shared with test_finetune.py


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_CACHE", str(tmp_path / "cache"))


def _few_shot(n=40, d=300, c=4, seed=0):
    """Fewer rows than features, as in the few-shot case (the solver's projected path)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = torch.randn(n, d, generator=g) + 2.0 * torch.randn(c, d, generator=g)[y]
    return x, y


def test_head_fits_run_on_one_thread(monkeypatch):
    """Every solve happens with torch and SciPy's BLAS on one thread (two threads made these
    tiny fits 10-30x slower on a loaded 2-core machine); the settings are restored after."""
    import scipy.optimize
    from threadpoolctl import threadpool_info

    seen = []
    real = scipy.optimize.minimize

    def spy(*args, **kwargs):
        blas = {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}
        seen.append((torch.get_num_threads(), blas))
        return real(*args, **kwargs)

    monkeypatch.setattr(scipy.optimize, "minimize", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as on a 2-core machine, whatever this test process was given
    try:
        x, y = _few_shot()
        choice = head_fit.select_and_fit(x, y, 4)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert len(seen) == choice.folds * len(head_fit.L2_GRID) + 1  # the CV fits + the refit
    assert all(t == 1 and blas == {1} for t, blas in seen)


def test_cv_on_rows_scaled_once_per_fold_equals_the_per_fit_path():
    """The CV scales and projects a fold's rows once for all its l2 values; the heads are
    those of `fit_linear` fitted on the fold's raw rows from the same warm starts."""
    x, y = _few_shot()
    folds = head_fit.n_folds(y)
    table = head_fit.cross_validate(x, y, 4, folds, seed=3)
    fold_of = head_fit.stratified_folds(y, folds, 3)
    nll = {l2: 0.0 for l2 in head_fit.L2_GRID}
    for f in range(folds):
        init = None
        for l2 in sorted(head_fit.L2_GRID, reverse=True):
            head = head_fit.fit_linear(x[fold_of != f], y[fold_of != f], 4, l2, init=init)
            init = head.scaled
            nll[l2] += float(torch.nn.functional.cross_entropy(
                head.logits(x[fold_of == f]), y[fold_of == f], reduction="sum"))
    for row in table:
        assert row["cv_log_loss"] == pytest.approx(nll[row["l2"]] / len(y), abs=1e-6)


def test_a_known_table_replaces_the_cross_validation(monkeypatch):
    x, y = _few_shot()
    fresh = head_fit.select_and_fit(x, y, 4, seed=1)
    monkeypatch.setattr(head_fit, "cross_validate", lambda *a, **k: pytest.fail("CV ran"))
    reused = head_fit.select_and_fit(x, y, 4, seed=1, known=fresh.table)
    assert reused.l2 == fresh.l2 and reused.table == fresh.table
    assert torch.allclose(reused.head.weight, fresh.head.weight, atol=1e-9)
    # The digest names exactly the problem: other rows, classes or seed, another digest.
    d = head_fit.problem_digest(x, y, 4, 1)
    assert d == head_fit.problem_digest(x.clone(), y.clone(), 4, 1)
    assert d != head_fit.problem_digest(x, y, 4, 2)
    assert d != head_fit.problem_digest(x[:, :-1], y, 4, 1)
    assert d != head_fit.problem_digest(x, y.roll(1), 4, 1)


def test_model_auto_runs_the_chosen_backbones_cv_once_and_fits_the_same_head(
        tmp_path, weights, useless_weights, monkeypatch):
    """--model auto: one cross-validation per candidate in all (the chosen one's is reused by
    its head fit, which used to run it again), and the head is the one a fresh CV gives."""
    photos = make_photos(tmp_path / "data")
    monkeypatch.setattr(backbone_choice, "available_backbones",
                        lambda: [(WORSE, useless_weights), (BACKBONE, weights)])
    calls = []
    real_cv = head_fit.cross_validate

    def cv(*a, **k):
        calls.append(1)
        return real_cv(*a, **k)

    monkeypatch.setattr(head_fit, "cross_validate", cv)
    r = train_default(photos, tmp_path / "run", weights=None, backbone="auto")
    assert r["backbone"] == BACKBONE and len(calls) == 2
    assert r["head_fit"]["cv_reused"]
    chosen = next(row for row in r["backbone_choice"] if row["chosen"])
    assert r["head_fit"]["cv"] == chosen["cv"]
    # The oracle: the same backbone named explicitly, its CV computed by the head fit itself.
    named = train_default(photos, tmp_path / "named", weights)
    assert len(calls) == 3 and not named["head_fit"]["cv_reused"]
    assert named["head_fit"]["l2"] == r["head_fit"]["l2"]
    for a, b in zip(named["head_fit"]["cv"], r["head_fit"]["cv"], strict=True):
        assert a["cv_log_loss"] == pytest.approx(b["cv_log_loss"], abs=1e-9)
    assert named["top1_interval"] == r["top1_interval"]


def test_candidates_are_not_built_for_a_cached_graph(tmp_path, weights, monkeypatch):
    """Scoring on an exported graph runs without the PyTorch net: built once to export it,
    not again when the features are computed anew from the cached graph."""
    import shutil

    from cnnlab.models.cache import cache_root

    photos = make_photos(tmp_path / "data", counts=(("train", 3),))
    paths = sorted(photos.rglob("*.png"))
    built = []
    real_call = PretrainedNet.__call__

    def counting(self):
        built.append(self.spec.name)
        return real_call(self)

    monkeypatch.setattr(PretrainedNet, "__call__", counting)
    quiet = Reporter(quiet=True)
    first = backbone_choice.frozen_features(BACKBONE, weights, paths, quiet, device="cpu",
                                            workers=0, draft=True, engine="onnxruntime")
    assert first.engine["engine"] == "onnxruntime" and built == [BACKBONE]  # the export
    shutil.rmtree(cache_root() / "features")
    again = backbone_choice.frozen_features(BACKBONE, weights, paths, quiet, device="cpu",
                                            workers=0, draft=True, engine="onnxruntime")
    assert again.computed == len(paths) and built == [BACKBONE]  # not built again
    assert torch.allclose(again.rows, first.rows, atol=1e-6)
    torch_rows = backbone_choice.frozen_features(BACKBONE, weights, paths, quiet, device="cpu",
                                                 workers=0, draft=True, engine="torch")
    assert torch_rows.computed == 0  # the cache answers; with no cache PyTorch builds:
    shutil.rmtree(cache_root() / "features")
    eager = backbone_choice.frozen_features(BACKBONE, weights, paths, quiet, device="cpu",
                                            workers=0, draft=True, engine="torch")
    assert built == [BACKBONE, BACKBONE] and eager.engine["engine"] == "torch"
    assert torch.allclose(eager.rows, first.rows, atol=1e-4)


def test_the_maps_of_the_mistakes_are_drawn_on_one_thread(tmp_path, weights, monkeypatch):
    """A few photos per pass: one thread (a second one cost 7x the CPU under load); the
    setting is restored after, and the maps are those of the usual writer (test_finetune)."""
    from cnnlab.tasks.finetune import pipeline

    photos = make_photos(tmp_path / "data")
    seen = []
    real = pipeline.explain_test_mistakes

    def spy(*a, **k):
        seen.append(torch.get_num_threads())
        return real(*a, **k)

    monkeypatch.setattr(pipeline, "explain_test_mistakes", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)  # as on a 2-core machine, whatever this test process was given
    try:
        r = train_default(photos, tmp_path / "run", weights, explain=True)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert r["explanations"] is not None


@pytest.mark.parametrize("seed", [0, 1, 7, 12345, 2**32 + 5])
def test_folds_shuffle_as_torch_randperm_does(seed):
    """The folds' shuffles without torch (head_fit._Mt19937Perm) are torch.randperm's from
    torch.Generator().manual_seed(seed), call after call on one generator, so the folds (and
    every CV table) are the same with numpy rows as with tensors."""
    g = torch.Generator().manual_seed(seed)
    ours = head_fit._Mt19937Perm(seed)
    for n in (1, 2, 3, 5, 17, 64, 300, 0, 40):
        assert ours.randperm(n).tolist() == torch.randperm(n, generator=g).tolist(), n
    y = torch.tensor([2, 0, 1, 1, 0, 2, 2, 1, 0, 0, 1, 2, 2, 0, 1])
    numpy_folds = head_fit.stratified_folds(y.numpy(), 3, seed)
    torch_folds = head_fit.stratified_folds(y, 3, seed)
    assert isinstance(numpy_folds, np.ndarray) and torch.is_tensor(torch_folds)
    assert numpy_folds.tolist() == torch_folds.tolist()


def test_numpy_rows_give_the_heads_and_tables_of_tensors():
    """The same fit from numpy arrays as from tensors: the same table, the same head bit for
    bit (numpy in, numpy out), the same problem digest."""
    x, y = _few_shot()
    from_torch = head_fit.select_and_fit(x, y, 4, seed=2)
    from_numpy = head_fit.select_and_fit(x.numpy(), y.numpy(), 4, seed=2)
    assert from_numpy.table == from_torch.table and from_numpy.l2 == from_torch.l2
    assert isinstance(from_numpy.head.weight, np.ndarray)
    assert np.array_equal(from_numpy.head.weight, from_torch.head.weight.numpy())
    assert np.array_equal(from_numpy.head.bias, from_torch.head.bias.numpy())
    assert (head_fit.problem_digest(x.numpy(), y.numpy(), 4, 2)
            == head_fit.problem_digest(x, y, 4, 2))
