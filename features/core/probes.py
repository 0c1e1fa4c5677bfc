"""Probes on pooled features: scikit-learn estimators from Feast-shaped frames to a fitted classifier.

A probe is one `Pipeline` that takes the frame a Feast service returns, one row per text:

  sparse  `latent_ids` (list of int) + `latent_values` (list of float): pooled SAE codes
  binary  `latent_ids` only: the latents above a threshold (values are ones)
  dense   `hidden` (list of float, the model width): a pooled hidden state
  text    `text`: the TF-IDF baseline

and runs [columns -> matrix] -> [binarize?] -> search over [select top-k? -> scale -> classifier],
where the search (`FoldSearchCV`: GridSearchCV's folds, scores and choice, each fold's selection and
scaling fit once for the whole grid) uses stratified k-fold on the data `fit` gets (the train
split; nothing here ever sees the test split). Every supervised or fitted step sits inside the
search, so feature selection and scaling are refit per fold and the inner validation folds stay
unseen by them; the label-free steps (columns, binarize: a quantile threshold is set on the whole
training part, without its labels) run once, before it.

Estimators follow scikit-learn's contract, so the fitted pipeline logs with `mlflow.sklearn`
(skops format) and serves the same frame it was trained on. What a fitted probe chose is read
through `chosen_params`, `selected_latents` and `explain`, never its steps.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

import numpy as np
import pandas as pd
from scipy import sparse
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.dummy import DummyClassifier
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.feature_selection import SelectKBest, f_classif
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score
from sklearn.model_selection import ParameterGrid, StratifiedKFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import MaxAbsScaler, StandardScaler
from sklearn.tree import DecisionTreeClassifier
from sklearn.utils.validation import check_is_fitted, validate_data

from features.core.binarize import BinarizeOp, Threshold, binarize_codes, check_op, passes, quantile_of
from features.core.metrics import macro_f1
from features.errors import SaefsError
from features.stores.feast.columns import HIDDEN, IDS, VALUES, to_csr

ProbeKind = Literal["logreg", "tree"]
ProbeInput = Literal["sparse", "dense"]
SEARCH_STEP = "search"  # the FoldSearchCV step of every probe; its inner steps: select, scale, clf
SELECT_STEP = "select"
MAX_ITER = 5000  # the paper's lbfgs budget; raw sum-pooled codes converge slowly even when scaled


# --- frames -> matrices -------------------------------------------------------------------------

class SparseColumns(TransformerMixin, BaseEstimator):
    """Feast's sparse columns -> CSR [n, width]; without a values column (binary views) every listed id is 1.

    `values_col=None`, or a frame without that column, gives ones. Whether values were used is
    learned at fit (`uses_values_`), so a frame that later lacks them is an error, not ones.
    """

    def __init__(self, width: int, ids_col: str = IDS, values_col: str | None = VALUES) -> None:
        self.width = width
        self.ids_col = ids_col
        self.values_col = values_col

    def fit(self, X: pd.DataFrame, y: Any = None) -> SparseColumns:
        if not isinstance(self.width, int | np.integer) or self.width < 1:
            raise SaefsError(f"SparseColumns width={self.width!r}: pass the SAE width (number of latents), e.g. 16384")
        _require_columns(X, [self.ids_col], type(self).__name__)
        self.uses_values_ = self.values_col is not None and self.values_col in X.columns
        return self

    def transform(self, X: pd.DataFrame) -> sparse.csr_matrix:
        check_is_fitted(self)
        values_col = self.values_col if self.uses_values_ else None
        _require_columns(X, [self.ids_col] + ([values_col] if values_col else []), type(self).__name__)
        values = X[values_col] if values_col else None
        return to_csr(X[self.ids_col], values, int(self.width))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray([f"latent_{i}" for i in range(int(self.width))], dtype=object)


class DenseColumn(TransformerMixin, BaseEstimator):
    """One list column (a pooled hidden state per row) -> float32 ndarray [n, width]; width learned at fit."""

    def __init__(self, col: str = HIDDEN) -> None:
        self.col = col

    def fit(self, X: pd.DataFrame, y: Any = None) -> DenseColumn:
        self.width_ = self._matrix(X).shape[1]
        return self

    def transform(self, X: pd.DataFrame) -> np.ndarray:
        check_is_fitted(self)
        matrix = self._matrix(X)
        if matrix.shape[1] != self.width_:
            raise SaefsError(f"column {self.col!r} has {matrix.shape[1]} values per row, the probe was fit on "
                             f"{self.width_}: use features of the same model and layer")
        return matrix

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        return np.asarray([f"{self.col}_{i}" for i in range(self.width_)], dtype=object)

    def _matrix(self, X: pd.DataFrame) -> np.ndarray:
        _require_columns(X, [self.col], type(self).__name__)
        rows = X[self.col].tolist()
        missing = [i for i, row in enumerate(rows) if row is None or np.ndim(row) != 1]
        if missing:
            raise SaefsError(f"column {self.col!r} has no vector in rows {missing[:5]}: drop texts without "
                             "features before fitting or predicting")
        lengths = {len(row) for row in rows}
        if len(lengths) > 1:
            raise SaefsError(f"column {self.col!r} mixes vector lengths {sorted(lengths)}: "
                             "one model and layer per probe")
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), -1)


def _require_columns(X: Any, columns: Sequence[str], who: str) -> None:
    if not isinstance(X, pd.DataFrame):
        raise SaefsError(f"{who} takes a pandas DataFrame with columns {list(columns)} (as Feast returns), "
                         f"got {type(X).__name__}")
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise SaefsError(f"{who}: the frame lacks columns {missing} (it has {list(X.columns)}): "
                         "request the feature service the probe was trained on")


# --- matrix steps -------------------------------------------------------------------------------

class Binarize(TransformerMixin, BaseEstimator):
    """x -> 1 where x > threshold (or >= with op=">="), else 0, as float32; CSR stays CSR.

    The paper's classifiers used `>`, its cross-lingual scripts `>=`. `threshold` is a number, or `q<NN>`:
    that quantile of the nonzero values `fit` sees (`threshold_`), so that the cut means the same on SAEs of
    other activation scales and is set from training texts only. On sparse input the implicit zeros must
    stay 0, so a threshold that would switch them on (< 0, or 0 with `>=`) is refused.
    """

    def __init__(self, threshold: Threshold = 1.0, op: BinarizeOp = ">") -> None:
        self.threshold = threshold
        self.op = op

    def fit(self, X: Any, y: Any = None) -> Binarize:
        check_op(self.op)
        X = validate_data(self, X, accept_sparse="csr", reset=True)
        quantile = quantile_of(self.threshold)
        if quantile is None:
            self.threshold_ = float(self.threshold)
            return self
        values = X.data if sparse.issparse(X) else np.asarray(X).ravel()
        values = values[values != 0]
        if values.size == 0:
            raise SaefsError(f"Binarize(threshold={self.threshold!r}): the training codes are all zero, so they "
                             "have no quantile; check the SAE (check_sae) or use a number")
        self.threshold_ = float(np.quantile(values, quantile))
        return self

    def transform(self, X: Any) -> Any:
        check_is_fitted(self)
        X = validate_data(self, X, accept_sparse="csr", reset=False)
        if not sparse.issparse(X):
            return passes(X, self.threshold_, self.op).astype(np.float32)
        if passes(np.float32(0), self.threshold_, self.op):
            raise SaefsError(f"Binarize(threshold={self.threshold_}, op={self.op!r}) would turn every implicit zero "
                             "of a sparse matrix on: use a threshold above 0 (or > 0 with '>=')")
        return binarize_codes(X, self.threshold_, self.op)

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        check_is_fitted(self)
        if input_features is None:
            input_features = getattr(self, "feature_names_in_", [f"x{i}" for i in range(self.n_features_in_)])
        return np.asarray(input_features, dtype=object)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        tags.transformer_tags.preserves_dtype = ["float32"]  # output is always float32 (0/1 exactly)
        return tags


def anova_f(X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
    """`f_classif` without its warnings about latents constant over the texts (their F is 0/0, NaN).

    ANOVA F works on CSR without densifying (per-class sums of x and x^2), handles any number of
    classes in one pass and is scale-free: it divides the between-class spread by the within-class
    variance, so raw sum-pooled codes with large magnitudes do not win by scale alone. Mutual
    information would be the alternative, but scikit-learn computes it one feature at a time
    (seconds per thousand latents). SelectKBest ranks a NaN below every score; a latent constant
    within each class but differing between them scores inf and ranks first. The warnings are
    silenced here, not around `fit`: the search may fit in worker processes.
    """
    with warnings.catch_warnings(), np.errstate(divide="ignore", invalid="ignore"):
        warnings.simplefilter("ignore", (UserWarning, RuntimeWarning))
        return f_classif(X, y)


# --- the hyperparameter search ------------------------------------------------------------------

SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "f1_macro": macro_f1,  # what scikit-learn's "f1_macro" computes
    "accuracy": accuracy_score,
}


class FoldSearchCV(ClassifierMixin, BaseEstimator):
    """GridSearchCV over the last step of a Pipeline, with each fold's earlier steps fit once for the whole grid.

    GridSearchCV refits the whole pipeline for every (candidate, fold): the supervised selection and
    the scaler are fit len(grid) times on the same rows, to the same result. Here each fold fits them
    once and every candidate's classifier reads their output: the same fits, so the same scores, the
    same choice (the first best mean) and the same refit on all rows as GridSearchCV
    (tests/features/test_probes.py compares them). The per-fold predictions are kept, so the
    out-of-fold probabilities at the chosen candidate (`oof_proba_`, row order of `fit`'s X) cost no
    refit. `param_grid` keys name the last step (`clf__C`); `scoring` is a key of SCORERS.
    """

    def __init__(self, estimator: Pipeline, param_grid: dict[str, list[Any]], *, cv: StratifiedKFold,
                 scoring: str = "f1_macro") -> None:
        self.estimator = estimator
        self.param_grid = param_grid
        self.cv = cv
        self.scoring = scoring

    def fit(self, X: Any, y: Any) -> FoldSearchCV:
        if self.scoring not in SCORERS:
            raise SaefsError(f"scoring={self.scoring!r}: expected one of {sorted(SCORERS)}")
        last, clf = self.estimator.steps[-1]
        grid = list(ParameterGrid(self.param_grid))
        foreign = sorted({key for params in grid for key in params if not key.startswith(f"{last}__")})
        if foreign:
            raise SaefsError(f"FoldSearchCV searches the last step {last!r} only; {foreign} name another step")
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        folds = list(self.cv.split(X, y))
        scores = np.empty((len(grid), len(folds)))
        oof = np.zeros((len(grid), len(y), len(self.classes_)))
        for f, (train, val) in enumerate(folds):
            head = clone(Pipeline(self.estimator.steps[:-1])) if len(self.estimator.steps) > 1 else None
            X_fit = head.fit_transform(X[train], y[train]) if head else X[train]
            X_val = head.transform(X[val]) if head else X[val]
            for c, params in enumerate(grid):
                fitted = clone(clf).set_params(**{key.split("__", 1)[1]: v for key, v in params.items()})
                fitted.fit(X_fit, y[train])
                proba = fitted.predict_proba(X_val)
                scores[c, f] = SCORERS[self.scoring](y[val], fitted.classes_[proba.argmax(axis=1)])
                oof[c, val[:, None], np.searchsorted(self.classes_, fitted.classes_)] = proba
        mean = scores.mean(axis=1)
        self.best_index_ = int(np.argmax(mean))
        self.best_params_, self.best_score_ = grid[self.best_index_], float(mean[self.best_index_])
        self.cv_results_ = {"params": grid, "mean_test_score": mean,
                            **{f"split{f}_test_score": scores[:, f] for f in range(len(folds))}}
        self.n_splits_, self.oof_proba_ = len(folds), oof[self.best_index_]
        self.best_estimator_ = clone(self.estimator).set_params(**self.best_params_).fit(X, y)
        self.n_features_in_ = X.shape[1]
        return self

    def predict(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.best_estimator_.predict(X)

    def predict_proba(self, X: Any) -> np.ndarray:
        check_is_fitted(self)
        return self.best_estimator_.predict_proba(X)

    def __sklearn_tags__(self) -> Any:
        tags = super().__sklearn_tags__()
        tags.input_tags.sparse = True
        return tags


# --- probes -------------------------------------------------------------------------------------

# kind -> (input -> (steps before the classifier, classifier, search grid)); a new kind is one entry
ClassifierSpec = tuple[list[tuple[str, Any]], Any, dict[str, list[Any]]]


def _logreg(input: ProbeInput, *, C_grid: Sequence[float], class_weight: str | None, scale: bool,
            seed: int) -> ClassifierSpec:
    # Dense hidden states: a few residual dimensions are orders of magnitude larger than the rest
    # (Gemma's dominant direction), so one L2 penalty over the C grid needs standardized columns.
    # Sparse codes: MaxAbsScaler is the one scaler that keeps CSR sparse (centring would densify
    # a 16k-wide matrix); it maps raw codes to [0, 1] per latent and leaves 0/1 features unchanged.
    scaler = StandardScaler() if input == "dense" else MaxAbsScaler()
    clf = LogisticRegression(max_iter=MAX_ITER, class_weight=class_weight, random_state=seed)
    return ([("scale", scaler)] if scale else []), clf, {"clf__C": [float(c) for c in C_grid]}


def _tree(input: ProbeInput, *, C_grid: Sequence[float], class_weight: str | None, scale: bool,
          seed: int) -> ClassifierSpec:
    clf = DecisionTreeClassifier(class_weight=class_weight, random_state=seed)
    return [], clf, {"clf__max_depth": [3, 5, 7, 9]}  # trees are scale-invariant: no scaler


CLASSIFIERS: dict[str, Callable[..., ClassifierSpec]] = {"logreg": _logreg, "tree": _tree}


def make_probe(
    kind: ProbeKind,
    *,
    width: int | None = None,
    binarize: Threshold | None = None,
    op: BinarizeOp = ">",
    select_k: int | None = None,
    C_grid: Sequence[float] = (0.001, 0.01, 0.1, 1.0),
    cv: int = 5,
    seed: int = 0,
    input: ProbeInput = "sparse",
    class_weight: Literal["balanced"] | None = "balanced",
    scale: bool = True,
    scoring: str = "f1_macro",
) -> Pipeline:
    """A probe: [SparseColumns(width) | DenseColumn] -> [Binarize?] -> FoldSearchCV([select?, scale?, clf]).

    The search picks C (logreg) or max_depth (tree) by stratified `cv`-fold CV, shuffled with
    `seed`, on whatever `fit` receives, scored by macro F1 (the paper's headline metric; its grid
    search used accuracy), then refits the best on all of it. `scale=False` reproduces the
    paper's unscaled probes. Binarization applies to SAE codes only, as in the paper.
    """
    if kind not in CLASSIFIERS:
        raise SaefsError(f"unknown probe kind {kind!r}: expected one of {sorted(CLASSIFIERS)}")
    if input not in get_args(ProbeInput):
        raise SaefsError(f"probe input {input!r} is not one of {list(get_args(ProbeInput))}")
    if input == "sparse" and width is None:
        raise SaefsError("a sparse probe needs width= (the SAE's number of latents) to shape its CSR matrix")
    if input == "dense" and binarize is not None:
        raise SaefsError("binarize applies to SAE codes, not hidden states: pass input='sparse' or binarize=None")
    if cv < 2:
        raise SaefsError(f"cv={cv}: choosing a hyperparameter needs at least 2 folds")
    if select_k is not None and (not isinstance(select_k, int | np.integer) or select_k < 1):
        raise SaefsError(f"select_k={select_k!r}: pass a positive number of latents to keep, or None")
    prep, clf, grid = CLASSIFIERS[kind](input, C_grid=C_grid, class_weight=class_weight, scale=scale, seed=seed)

    # k above the SAE width keeps every latent (SelectKBest would too, with a warning per fold)
    k = min(int(select_k), int(width)) if select_k is not None and width is not None else select_k
    inner = [(SELECT_STEP, SelectKBest(anova_f, k=k))] if k is not None else []
    search = FoldSearchCV(Pipeline([*inner, *prep, ("clf", clf)]), grid, scoring=scoring,
                          cv=StratifiedKFold(n_splits=cv, shuffle=True, random_state=seed))
    columns = SparseColumns(width=int(width)) if input == "sparse" else DenseColumn()  # type: ignore[arg-type]
    outer: list[tuple[str, Any]] = [("columns", columns)]
    if binarize is not None:
        outer.append(("binarize", Binarize(threshold=binarize, op=op)))
    return Pipeline([*outer, (SEARCH_STEP, search)])


# --- what a fitted probe chose, and why it decides as it does ---------------------------------------

def chosen_params(probe: Pipeline) -> dict[str, Any]:
    """The hyperparameters a fitted probe's search chose, without the step prefix: {'C': 0.1}."""
    best = _search(probe).best_params_
    return {key.split("__", 1)[-1]: value for key, value in best.items()}


def selected_latents(probe: Pipeline) -> np.ndarray:
    """The input columns (latents) a fitted probe's classifier reads, ascending: its top-k, or all of them."""
    search = _search(probe)
    select = search.best_estimator_.named_steps.get(SELECT_STEP)
    return select.get_support(indices=True) if select is not None else np.arange(search.n_features_in_)


@dataclass(frozen=True)
class Latent:
    latent: int
    coefficient: float  # the probe's weight on this latent's input value, signed toward the returned label
    activation: float  # the value the probe read (pooled code, or 1 when binarized)
    contribution: float  # coefficient x activation: its share of the decision's logit


def explain(probe: Pipeline, frame: pd.DataFrame, predicted: np.ndarray, top: int) -> list[list[Latent]]:
    """Per row, the `top` latents by contribution toward its predicted class (an index into `classes_`).

    The contribution of a latent is the linear classifier's weight times the value it saw after
    the probe's scaling, i.e. its term of the logit; `coefficient` is that weight brought back to
    the probe's input (contribution / activation). Probes without coefficients (trees) explain nothing.
    """
    steps = _search(probe).best_estimator_.steps
    clf = steps[-1][1]
    if top == 0 or not hasattr(clf, "coef_"):
        return [[] for _ in range(len(frame))]
    inputs = sparse.csr_matrix(probe[:-1].transform(frame))  # columns (and binarize): what the probe reads
    scaled = inputs
    for _, step in steps[:-1]:
        scaled = step.transform(scaled)
    scaled = sparse.csr_matrix(scaled)
    latents = selected_latents(probe)
    inputs = inputs[:, latents]
    out = []
    for row, label in enumerate(predicted):
        # Binary logistic regression has one row of weights, toward classes_[1].
        weights = clf.coef_[0] * (1.0 if label == 1 else -1.0) if clf.coef_.shape[0] == 1 else clf.coef_[label]
        columns = scaled[row].indices
        contributions = scaled[row].data * weights[columns]
        activations = inputs[row].toarray()[0, columns]
        order = np.argsort(-contributions, kind="stable")[:top]
        out.append([Latent(int(latents[columns[i]]), float(contributions[i] / activations[i]),
                           float(activations[i]), float(contributions[i])) for i in order])
    return out


def influential_latents(probe: Pipeline, top: int) -> list[tuple[int, float]]:
    """The `top` latents a fitted linear probe weighs most, with their weight: (latent, weight), by |weight|.

    The weight is the classifier's coefficient on the scaled input, i.e. the change of the logit (toward
    the positive class of a binary task; the class it favours most, for more) when the latent goes from
    0 to the largest value it took in training (MaxAbsScaler), or from off to on (binarized codes).
    Probes without coefficients (trees) name none.
    """
    clf = _search(probe).best_estimator_.steps[-1][1]
    if not hasattr(clf, "coef_"):
        return []
    coef = clf.coef_[0] if clf.coef_.shape[0] == 1 else clf.coef_[np.abs(clf.coef_).argmax(axis=0),
                                                                  np.arange(clf.coef_.shape[1])]
    latents = selected_latents(probe)
    return [(int(latents[i]), float(coef[i])) for i in np.argsort(-np.abs(coef), kind="stable")[:top]]


def _search(probe: Pipeline) -> FoldSearchCV:
    check_is_fitted(probe)
    return probe.named_steps[SEARCH_STEP]


# --- baselines ----------------------------------------------------------------------------------

def make_tfidf_baseline(seed: int = 0, *, text_col: str = "text", stop_words: str | None = "english") -> Pipeline:
    """The paper's bag-of-words baseline on a frame's text column: TF-IDF 1-2 grams (20k) + balanced logreg.

    English stop words are removed for every language, as the paper's code did.
    """
    tfidf = TfidfVectorizer(ngram_range=(1, 2), max_features=20000, stop_words=stop_words)
    clf = LogisticRegression(max_iter=10000, class_weight="balanced", random_state=seed)
    return Pipeline([("tfidf", ColumnTransformer([("text", tfidf, text_col)])), ("clf", clf)])


def make_majority_baseline() -> ClassifierMixin:
    """The floor every probe must beat: the training split's most frequent class for every text.

    `DummyClassifier` ignores X's contents, so it takes the same frame as the probes as is.
    """
    return DummyClassifier(strategy="most_frequent")
