"""Probes: Feast-shaped frames -> matrices, binarization, top-k selection, CV on train only, baselines."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score
from sklearn.model_selection import GridSearchCV, cross_val_predict
from sklearn.utils.estimator_checks import parametrize_with_checks

from features.core.probes import (
    SEARCH_STEP,
    SELECT_STEP,
    Binarize,
    DenseColumn,
    SparseColumns,
    anova_f,
    chosen_params,
    explain,
    influential_latents,
    make_majority_baseline,
    make_probe,
    make_tfidf_baseline,
    selected_latents,
)
from features.errors import SaefsError

WIDTH = 64
INFORMATIVE = (0, 1, 2)  # 0 and 1 fire on class 1, 2 on class 0 (90% of the time each)
FAST = {"C_grid": (0.1, 1.0), "cv": 3}  # keeps each search at 7 fits


def synthetic_frame(n: int = 200, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    """Feast's sparse columns for `n` texts: 6 noise latents each, plus the informative ones of its class."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    ids, values = [], []
    for label in y:
        active = set(rng.choice(np.arange(len(INFORMATIVE), WIDTH), 6, replace=False).tolist())
        if rng.random() < 0.9:
            active |= {0, 1} if label == 1 else {2}
        row = sorted(active)
        ids.append(row)
        values.append((1.5 + rng.random(len(row)) * 2).round(3).tolist())
    return pd.DataFrame({"latent_ids": ids, "latent_values": values}), y


def split(frame: pd.DataFrame, y: np.ndarray, n_train: int = 150):
    return frame.iloc[:n_train], y[:n_train], frame.iloc[n_train:], y[n_train:]


# --- frames -> matrices -------------------------------------------------------------------------

def test_sparse_columns_builds_csr_from_lists_arrays_and_none() -> None:
    frame = pd.DataFrame({"latent_ids": [[1, 3], np.array([0], dtype=np.int32), None],
                          "latent_values": [[0.5, 2.0], np.array([1.5], dtype=np.float32), None]})
    matrix = SparseColumns(width=4).fit_transform(frame)
    assert sparse.isspmatrix_csr(matrix) and matrix.shape == (3, 4)
    np.testing.assert_allclose(matrix.toarray(), [[0, 0.5, 0, 2.0], [1.5, 0, 0, 0], [0, 0, 0, 0]])


def test_sparse_columns_without_values_gives_ones() -> None:
    frame = pd.DataFrame({"latent_ids": [[1, 3], [2]]})
    np.testing.assert_array_equal(SparseColumns(width=4).fit_transform(frame).toarray(),
                                  [[0, 1, 0, 1], [0, 0, 1, 0]])
    with_values = pd.DataFrame({"latent_ids": [[1]], "latent_values": [[7.0]]})
    assert SparseColumns(width=4, values_col=None).fit_transform(with_values).toarray()[0, 1] == 1


def test_sparse_columns_errors_name_the_input() -> None:
    fitted = SparseColumns(width=4).fit(pd.DataFrame({"latent_ids": [[1]], "latent_values": [[2.0]]}))
    with pytest.raises(SaefsError, match=r"lacks columns \['latent_values'\]"):
        fitted.transform(pd.DataFrame({"latent_ids": [[1]]}))  # trained on values: ones would be wrong
    with pytest.raises(SaefsError, match="takes a pandas DataFrame"):
        fitted.transform(np.zeros((1, 4)))
    with pytest.raises(SaefsError, match="outside a width of 4"):
        fitted.transform(pd.DataFrame({"latent_ids": [[9]], "latent_values": [[1.0]]}))
    with pytest.raises(SaefsError, match="pass the SAE width"):
        SparseColumns(width=0).fit(pd.DataFrame({"latent_ids": [[1]]}))


def test_dense_column_stacks_rows_and_checks_width() -> None:
    frame = pd.DataFrame({"hidden": [np.arange(3.0), [1.0, 2.0, 3.0]]})
    step = DenseColumn().fit(frame)
    assert step.transform(frame).dtype == np.float32 and step.transform(frame).shape == (2, 3)
    assert step.get_feature_names_out().tolist() == ["hidden_0", "hidden_1", "hidden_2"]
    with pytest.raises(SaefsError, match="fit on 3"):
        step.transform(pd.DataFrame({"hidden": [[1.0, 2.0]]}))
    with pytest.raises(SaefsError, match=r"no vector in rows \[1\]"):
        step.transform(pd.DataFrame({"hidden": [[1.0, 2.0, 3.0], None]}))


# --- binarize and select ------------------------------------------------------------------------

def test_binarize_strict_and_inclusive_at_the_threshold() -> None:
    codes = sparse.csr_matrix(np.array([[0.0, 1.0, 1.5], [0.5, 0.0, 1.0]]))
    strict = Binarize(threshold=1.0, op=">").fit_transform(codes)
    inclusive = Binarize(threshold=1.0, op=">=").fit_transform(codes)
    assert sparse.isspmatrix_csr(strict) and strict.dtype == np.float32
    np.testing.assert_array_equal(strict.toarray(), [[0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(inclusive.toarray(), [[0, 1, 1], [0, 0, 1]])
    np.testing.assert_array_equal(Binarize(op=">=").fit_transform(codes.toarray()), inclusive.toarray())


def test_a_quantile_threshold_is_set_from_the_nonzero_codes_fit_sees_and_kept_for_new_texts() -> None:
    train = sparse.csr_matrix(np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 4.0], [0.0, 0.0, 5.0]], dtype=np.float32))
    step = Binarize(threshold="q50").fit(train)
    assert step.threshold_ == 3.0  # the median of 1..5: the zeros are not codes
    assert step.transform(train).toarray().tolist() == [[0, 0, 0], [0, 0, 1], [0, 0, 1]]
    new = sparse.csr_matrix(np.array([[9.0, 3.0, 0.5]], dtype=np.float32))
    assert step.transform(new).toarray().tolist() == [[1, 0, 0]]  # the training median, not the new text's
    dense = Binarize(threshold="q50").fit_transform(train.toarray())
    np.testing.assert_array_equal(dense, step.transform(train).toarray())
    with pytest.raises(SaefsError, match="the training codes are all zero"):
        Binarize(threshold="q50").fit(sparse.csr_matrix((2, 3), dtype=np.float32))


def test_binarize_refuses_what_would_densify_or_is_unknown() -> None:
    codes = sparse.csr_matrix(np.eye(2))
    with pytest.raises(SaefsError, match="every implicit zero"):
        Binarize(threshold=0.0, op=">=").fit_transform(codes)
    with pytest.raises(SaefsError, match="not one of"):
        Binarize(op="gt").fit(codes)  # type: ignore[arg-type]


def test_anova_f_scores_csr_and_leaves_constant_latents_unscored_without_warnings() -> None:
    X = np.array([[1.0, 0.0, 5.0, 0.0], [1.0, 1.0, 5.0, 2.0], [1.0, 0.0, 5.0, 0.0], [1.0, 1.0, 5.0, 2.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # f_classif itself warns about the constant latents 0 and 2
        scores, _ = anova_f(sparse.csr_matrix(X), [0, 1, 0, 1])
    assert np.isnan(scores[[0, 2]]).all() and np.isposinf(scores[[1, 3]]).all()


def test_a_probe_selects_the_informative_latents_and_keeps_all_when_k_exceeds_the_width() -> None:
    train, y_train, _, _ = split(*synthetic_frame())
    probe = make_probe("logreg", width=WIDTH, select_k=3, **FAST).fit(train, y_train)
    assert selected_latents(probe).tolist() == sorted(INFORMATIVE)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SelectKBest would warn about k > the width in every fold
        wide = make_probe("logreg", width=WIDTH, select_k=10_000, **FAST).fit(train, y_train)
    assert selected_latents(wide).tolist() == list(range(WIDTH))
    unselected = make_probe("logreg", width=WIDTH, **FAST).fit(train, y_train)
    assert selected_latents(unselected).tolist() == list(range(WIDTH))


@parametrize_with_checks([Binarize()])
def test_sklearn_estimator_checks(estimator, check) -> None:
    check(estimator)


@pytest.mark.parametrize("estimator", [SparseColumns(width=8, values_col=None), DenseColumn(col="h"),
                                       make_probe("logreg", width=8, binarize=1.0, select_k=4)])
def test_params_round_trip_through_clone_and_set_params(estimator) -> None:
    params = estimator.get_params()
    cloned = clone(estimator)
    assert cloned is not estimator and cloned.get_params().keys() == params.keys()
    assert cloned.set_params(**{key: params[key] for key in cloned.get_params(deep=False)}) is cloned
    assert not any(name.endswith("_") and not name.startswith("_") for name in vars(cloned))  # nothing learned


# --- probes -------------------------------------------------------------------------------------

def test_logreg_probe_beats_the_majority_floor() -> None:
    train, y_train, test, y_test = split(*synthetic_frame())
    probe = make_probe("logreg", width=WIDTH, binarize=1.0, **FAST).fit(train, y_train)
    floor = make_majority_baseline().fit(train, y_train)
    probe_f1 = f1_score(y_test, probe.predict(test), average="macro")
    assert probe_f1 > 0.8 > f1_score(y_test, floor.predict(test), average="macro")
    assert chosen_params(probe)["C"] in FAST["C_grid"]
    assert probe.predict_proba(test).shape == (len(test), 2)


def planted_frame(n: int = 400, seed: int = 1) -> tuple[pd.DataFrame, np.ndarray]:
    """A planted signal: latent 0 fires on every class-1 text and only there; 6 noise latents each."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    noise = [set(rng.choice(np.arange(3, WIDTH), 6, replace=False).tolist()) for _ in y]
    ids = [sorted(row | {0} if label == 1 else row) for row, label in zip(noise, y, strict=True)]
    values = [[2.0] * len(row) for row in ids]
    return pd.DataFrame({"latent_ids": ids, "latent_values": values}), y


def test_a_planted_signal_is_found_and_shuffled_labels_stay_near_chance() -> None:
    frame, y = planted_frame()
    train, y_train, test, y_test = split(frame, y, n_train=300)
    probe = make_probe("logreg", width=WIDTH, **FAST).fit(train, y_train)
    assert f1_score(y_test, probe.predict(test), average="macro") == 1.0
    shuffled = np.random.default_rng(2).permutation(y_train)
    chance = make_probe("logreg", width=WIDTH, **FAST).fit(train, shuffled)
    assert 0.3 < f1_score(y_test, chance.predict(test), average="macro") < 0.7


def test_c_is_chosen_by_cv_on_the_train_rows_only(monkeypatch: pytest.MonkeyPatch) -> None:
    train, y_train, test, _ = split(*synthetic_frame())
    rows_seen: list[int] = []
    original_fit = LogisticRegression.fit

    def spy(self, X, y, *args, **kwargs):
        rows_seen.append(X.shape[0])
        return original_fit(self, X, y, *args, **kwargs)

    monkeypatch.setattr(LogisticRegression, "fit", spy)
    probe = make_probe("logreg", width=WIDTH, **FAST).fit(train, y_train)
    # per C, one fit per fold on (cv-1)/cv of the train rows, then one refit on all of them
    assert len(rows_seen) == len(FAST["C_grid"]) * FAST["cv"] + 1
    assert max(rows_seen[:-1]) < len(train) and rows_seen[-1] == len(train)
    search = probe.named_steps[SEARCH_STEP]
    assert search.n_splits_ == FAST["cv"] and search.best_params_["clf__C"] in FAST["C_grid"]
    probe.predict(test)
    assert len(rows_seen) == len(FAST["C_grid"]) * FAST["cv"] + 1  # predicting never refits


@pytest.mark.parametrize("case", ["sparse_select", "dense", "multiclass", "tree"])
def test_the_search_chooses_scores_and_refits_as_gridsearchcv_and_keeps_its_out_of_fold_predictions(case: str) -> None:
    """FoldSearchCV fits each fold's selection and scaling once for the whole grid; the fits are the same as
    GridSearchCV's, so every score, the choice, the refit and the chosen candidate's out-of-fold
    probabilities (what cross_val_predict refits) are equal."""
    frame, y = synthetic_frame(n=240, seed=3)
    kind, options = "logreg", {"width": WIDTH, "select_k": 8, "C_grid": (0.01, 0.1, 1.0), "cv": 4, "seed": 2}
    if case == "dense":
        frame = pd.DataFrame({"hidden": list(SparseColumns(width=WIDTH).fit_transform(frame).toarray()[:, :12])})
        options = {"input": "dense", "C_grid": (0.001, 0.1, 10.0), "cv": 3}
    elif case == "multiclass":
        y = np.where(np.arange(len(y)) % 5 == 0, 2, y)
    elif case == "tree":
        kind, options = "tree", {"width": WIDTH, "cv": 3}
    probe = make_probe(kind, **options)
    X = probe[:-1].fit_transform(frame)
    ours = probe.named_steps[SEARCH_STEP]
    reference = GridSearchCV(clone(ours.estimator), ours.param_grid, scoring="f1_macro", cv=ours.cv,
                             error_score="raise").fit(X, y)
    ours.fit(X, y)
    assert ours.best_params_ == reference.best_params_ and ours.n_splits_ == reference.n_splits_
    np.testing.assert_array_equal(ours.cv_results_["mean_test_score"], reference.cv_results_["mean_test_score"])
    np.testing.assert_array_equal(ours.predict_proba(X), reference.predict_proba(X))
    refit_oof = cross_val_predict(clone(reference.best_estimator_), X, y, cv=ours.cv, method="predict_proba")
    np.testing.assert_allclose(ours.oof_proba_, refit_oof, rtol=0, atol=1e-12)


def test_the_search_refuses_an_unknown_scoring_or_a_grid_over_another_step() -> None:
    frame, y = synthetic_frame()
    X = SparseColumns(width=WIDTH).fit_transform(frame)
    probe = make_probe("logreg", width=WIDTH, select_k=4, **FAST)
    with pytest.raises(SaefsError, match="scoring='roc'"):
        clone(probe.named_steps[SEARCH_STEP]).set_params(scoring="roc").fit(X, y)
    with pytest.raises(SaefsError, match=r"\['select__k'\] name another step"):
        clone(probe.named_steps[SEARCH_STEP]).set_params(param_grid={"select__k": [2, 4]}).fit(X, y)


def test_the_most_weighted_latents_are_the_informative_ones_signed_by_class() -> None:
    frame, y = synthetic_frame(n=400, seed=5)
    probe = make_probe("logreg", width=WIDTH, select_k=10, C_grid=(1.0,), cv=3).fit(frame, y)
    top = influential_latents(probe, 3)
    assert {latent for latent, _ in top} == set(INFORMATIVE)
    weights = dict(top)
    assert weights[0] > 0 and weights[1] > 0 and weights[2] < 0  # 0 and 1 fire on class 1, 2 on class 0
    assert influential_latents(make_probe("tree", width=WIDTH, cv=3).fit(frame, y), 3) == []


def test_selection_runs_inside_the_search() -> None:
    train, y_train, _, _ = split(*synthetic_frame())
    probe = make_probe("logreg", width=WIDTH, select_k=3, **FAST).fit(train, y_train)
    search = probe.named_steps[SEARCH_STEP]
    assert SELECT_STEP in search.best_estimator_.named_steps and SELECT_STEP not in probe.named_steps
    assert type(search.best_estimator_.named_steps["scale"]).__name__ == "MaxAbsScaler"  # keeps CSR sparse


def test_explanations_add_up_to_the_logit_in_the_selected_latents() -> None:
    train, y_train, test, _ = split(*synthetic_frame())
    probe = make_probe("logreg", width=WIDTH, select_k=5, **FAST).fit(train, y_train)
    probabilities = probe.predict_proba(test)
    predicted = probabilities.argmax(axis=1)
    intercept = probe.named_steps[SEARCH_STEP].best_estimator_[-1].intercept_[0]
    for row, latents in enumerate(explain(probe, test, predicted, top=WIDTH)):
        assert {latent.latent for latent in latents} <= set(selected_latents(probe).tolist())
        sign = 1.0 if predicted[row] == 1 else -1.0
        p = probabilities[row, predicted[row]]
        assert np.isclose(sum(latent.contribution for latent in latents) + sign * intercept, np.log(p / (1 - p)))
        for latent in latents:
            assert np.isclose(latent.coefficient * latent.activation, latent.contribution)
    tree = make_probe("tree", width=WIDTH, cv=3).fit(train, y_train)
    assert explain(tree, test, predicted, top=3) == [[] for _ in range(len(test))]


def test_dense_probe_standardizes_hidden_states() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 120)
    hidden = rng.normal(size=(120, 8)) + np.outer(y, [3, 0, 0, 0, 0, 0, 0, 0]) + [0, 500, 0, 0, 0, 0, 0, 0]
    frame = pd.DataFrame({"hidden": list(hidden)})
    probe = make_probe("logreg", input="dense", **FAST).fit(frame, y)
    assert type(probe.named_steps[SEARCH_STEP].best_estimator_.named_steps["scale"]).__name__ == "StandardScaler"
    assert probe.score(frame, y) > 0.9


def test_tree_probe_chooses_a_depth_from_the_grid() -> None:
    train, y_train, test, y_test = split(*synthetic_frame())
    probe = make_probe("tree", width=WIDTH, cv=3).fit(train, y_train)
    assert chosen_params(probe)["max_depth"] in (3, 5, 7, 9)
    assert f1_score(y_test, probe.predict(test), average="macro") > 0.8


def test_make_probe_rejects_impossible_configurations() -> None:
    with pytest.raises(SaefsError, match="needs width="):
        make_probe("logreg")
    with pytest.raises(SaefsError, match="not hidden states"):
        make_probe("logreg", input="dense", binarize=1.0)
    with pytest.raises(SaefsError, match="unknown probe kind"):
        make_probe("svm", width=8)  # type: ignore[arg-type]
    with pytest.raises(SaefsError, match="select_k=0"):
        make_probe("logreg", width=8, select_k=0)


# --- baselines ----------------------------------------------------------------------------------

def test_tfidf_baseline_and_majority_floor_take_a_text_frame() -> None:
    texts = pd.DataFrame({"text": ["a lovely kind message", "you awful idiot"] * 20, "latent_ids": [[1]] * 40})
    y = np.array([0, 1] * 20)
    assert make_tfidf_baseline(seed=0).fit(texts, y).score(texts, y) == 1.0
    floor = make_majority_baseline().fit(texts, np.array([1] * 30 + [0] * 10))
    assert floor.predict(texts).tolist() == [1] * 40
