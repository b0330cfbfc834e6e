"""A fitted churn estimator compiled to plain numpy, for the request path.

sklearn spends 6-9 ms of Python per ``predict_proba`` call (input validation, ColumnTransformer's column selection
through pandas) whatever the row count, while the arithmetic of our pipelines takes microseconds. ``compile_model``
reads the fitted parameters of the shapes ``training/models.py`` builds —

    [CalibratedClassifierCV(method="sigmoid") over] Pipeline[
        ColumnTransformer[numbers: passthrough | SimpleImputer + StandardScaler, strings: OneHotEncoder],
        LogisticRegression | HistGradientBoostingClassifier]

— into arrays, and raises :class:`Uncompilable` for anything else, so callers fall back to sklearn. Every output
column of the preprocessing depends on one input feature only, which is what makes reason codes cheap: a row with
feature j set to its reference value is the encoded row with feature j's columns replaced by the encoded
reference. A compiled model is only used after :func:`verify` found it equal to ``predict_proba`` on probe rows.
"""

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from operator import itemgetter
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.frozen import FrozenEstimator
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from churn_common.errors import ChurnError
from churn_common.model import ChurnModel

logger = logging.getLogger(__name__)

# Compiled and sklearn probabilities may differ by float summation order, never by more than this.
VERIFY_TOLERANCE = 1e-9
# Occlusion index arrays are kept for calls of up to this many rows (the calls concurrent requests share).
_KEPT_PLANS = 64
_NAN_KEY = object()  # a category that is float NaN: NaN != NaN, so it cannot key a dict as itself


class Uncompilable(ChurnError):
    """The estimator has a shape this module does not compile; score it with sklearn instead."""


@dataclass(frozen=True)
class _NumericBlock:
    """Numeric features through optional median imputation (+ missing indicators) and scaling."""

    features: tuple[str, ...]
    fill: np.ndarray | None  # imputation values; None when passed through
    indicated: np.ndarray  # positions (within ``features``) that get a missing-indicator column
    mean: np.ndarray | None
    scale: np.ndarray | None

    @property
    def width(self) -> int:
        return len(self.features) + len(self.indicated)

    def encode(self, values: np.ndarray) -> np.ndarray:
        """``values``: (n, len(features)) float64 with NaN for missing. In place on one output array: a request
        encodes one row, where each numpy call costs more than its arithmetic."""
        if self.fill is None and self.mean is None and self.scale is None:
            return values
        out = np.empty((len(values), self.width))
        imputed = out[:, : len(self.features)]
        imputed[...] = values
        if self.fill is not None:
            missing = np.isnan(values)
            np.copyto(imputed, self.fill, where=missing)
            out[:, len(self.features) :] = missing[:, self.indicated]
        if self.mean is not None:
            out -= self.mean
        if self.scale is not None:
            out /= self.scale
        return out

    def columns_of(self, start: int) -> dict[str, list[int]]:
        columns = {name: [start + i] for i, name in enumerate(self.features)}
        for k, i in enumerate(self.indicated):
            columns[self.features[i]].append(start + len(self.features) + k)
        return columns


@dataclass(frozen=True)
class _OneHotBlock:
    features: tuple[str, ...]
    tables: tuple[dict[Any, int], ...]  # per feature: category -> column offset within its block
    widths: tuple[int, ...]

    @property
    def width(self) -> int:
        return sum(self.widths)

    @property
    def tables_by_name(self) -> dict[str, dict[Any, int]]:
        return dict(zip(self.features, self.tables, strict=True))

    def encode(self, columns: Sequence[Sequence[Any]], n_rows: int) -> np.ndarray:
        out = np.zeros((n_rows, self.width))
        start = 0
        for table, width, values in zip(self.tables, self.widths, columns, strict=True):
            for row, value in enumerate(values):
                offset = table.get(_category_key(value))
                if offset is not None:  # unknown categories encode as all zeros (handle_unknown="ignore")
                    out[row, start + offset] = 1.0
            start += width
        return out

    def columns_of(self, start: int) -> dict[str, list[int]]:
        columns = {}
        for name, width in zip(self.features, self.widths, strict=True):
            columns[name] = list(range(start, start + width))
            start += width
        return columns


def _category_key(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return _NAN_KEY
    return value


class CompiledModel:
    """``predict_proba`` and occlusion reasons of a :class:`ChurnModel` without sklearn on the call path."""

    def __init__(self, model: ChurnModel, numeric: _NumericBlock, one_hot: _OneHotBlock, head: "_Head") -> None:
        self.model = model
        self._numeric = numeric
        self._one_hot = one_hot
        self._head = head
        self._numeric_names = list(numeric.features)
        self._numbers_of = tuple_getter(self._numeric_names)
        self._string_names = list(one_hot.features)
        self._strings = frozenset(one_hot.features)
        reference = self.encode_rows([model.reference_values])[0]
        self._occlusion = self._occlusion_plan(reference)
        self._occlusion_by_rows: dict[int, tuple[tuple[np.ndarray, np.ndarray], np.ndarray]] = {}

    @property
    def categories(self) -> dict[str, list[Any]]:
        """Known categories per string feature (NaN as an internal marker)."""
        return {name: [*table] for name, table in self._one_hot.tables_by_name.items()}

    @property
    def string_features(self) -> frozenset[str]:
        return self._strings

    def encode_rows(self, rows: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Rows (feature name -> value, None for missing) to the matrix the classifier sees."""
        # numpy turns None into NaN when it builds a float64 array, which is how missing numbers reach sklearn.
        numbers = np.array([self._numbers_of(row) for row in rows], dtype=np.float64)
        numbers = numbers.reshape(len(rows), len(self._numeric_names))
        strings = [[row[name] for row in rows] for name in self._string_names]
        return np.hstack([self._numeric.encode(numbers), self._one_hot.encode(strings, len(rows))])

    def proba(self, encoded: np.ndarray) -> np.ndarray:
        return self._head(encoded)

    def score_and_explain(
        self, rows: Sequence[Mapping[str, Any]], top_k: int = 3
    ) -> tuple[np.ndarray, list[list[dict]]]:
        """What ``ChurnModel.score_and_explain`` returns for these rows, from one pass over a stacked matrix."""
        encoded = self.encode_rows(rows)
        width = len(self.model.feature_names) + 1
        stacked = np.repeat(encoded, width, axis=0)
        cells, values = self._occlusion_cells(len(rows))
        stacked[cells] = values
        scores = self.proba(stacked).reshape(len(rows), width)
        base = scores[:, 0]
        contributions = base[:, None] - scores[:, 1:]
        return base, self.model.top_reasons([self._value_reader(row) for row in rows], contributions, top_k)

    def _occlusion_cells(self, n_rows: int) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
        """The occlusion plan repeated for ``n_rows`` stacked groups, kept for the small counts requests use."""
        plan = self._occlusion_by_rows.get(n_rows)
        if plan is None:
            rows_at, columns_at, values = self._occlusion
            offsets = np.arange(n_rows) * (len(self.model.feature_names) + 1)
            cells = ((rows_at[None, :] + offsets[:, None]).ravel(), np.tile(columns_at, n_rows))
            plan = (cells, np.tile(values, n_rows))
            if n_rows <= _KEPT_PLANS:
                self._occlusion_by_rows[n_rows] = plan
        return plan

    def _value_reader(self, row: Mapping[str, Any]) -> Callable[[str], Any]:
        """Reported values as sklearn's path reports them: numbers as floats (a count read as an int included)."""
        strings = self._strings
        return lambda name: row[name] if name in strings or row[name] is None else float(row[name])

    def _occlusion_plan(self, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(row within a stacked group, column, value) of every cell the reference replaces: row 1 + j holds
        feature j's reference, in all of feature j's encoded columns."""
        columns_of = self._numeric.columns_of(0) | self._one_hot.columns_of(self._numeric.width)
        rows_at, columns_at = [], []
        for j, name in enumerate(self.model.feature_names):
            rows_at += [1 + j] * len(columns_of[name])
            columns_at += columns_of[name]
        columns = np.array(columns_at, dtype=np.intp)
        return np.array(rows_at, dtype=np.intp), columns, reference[columns]


def tuple_getter(names: Sequence[str]) -> Callable[[Mapping[str, Any]], tuple]:
    """``row -> tuple(row[name] for name in names)``, with itemgetter's C loop whatever the number of names."""
    if len(names) == 1:
        return lambda row: (row[names[0]],)
    return itemgetter(*names) if names else lambda row: ()


class _Head:
    """The classifier's decision function, then the sigmoid calibrators averaged as sklearn averages them, or
    (uncalibrated) the logistic link both classifiers apply in their own ``predict_proba``."""

    def __init__(self, decision: Callable[[np.ndarray], np.ndarray], calibrators: Sequence[tuple[float, float]]):
        self._decision = decision
        # All calibrators in one broadcast: a call per calibrator costs more than its arithmetic on a request's rows.
        self._slopes = np.array([a for a, _ in calibrators])
        self._offsets = np.array([b for _, b in calibrators])

    def __call__(self, encoded: np.ndarray) -> np.ndarray:
        decision = self._decision(encoded)
        if not len(self._slopes):
            return expit(decision)
        return expit(-(decision[:, None] * self._slopes + self._offsets)).sum(axis=1) / len(self._slopes)


def _linear_decision(classifier: LogisticRegression):
    # The very expression sklearn evaluates, so both take the same BLAS path and agree to the last bit.
    coef, intercept = classifier.coef_.T, classifier.intercept_
    return lambda encoded: (encoded @ coef + intercept).ravel()


def _boosting_decision(classifier: HistGradientBoostingClassifier):
    if classifier.n_trees_per_iteration_ != 1 or classifier.is_categorical_ is not None:
        raise Uncompilable("only binary gradient boosting without native categorical features is compiled")
    known_categories, feature_map = classifier._bin_mapper.make_known_categories_bitsets()
    predictors = [
        partial(tree.predict, known_cat_bitsets=known_categories, f_idx_map=feature_map, n_threads=1)
        for trees in classifier._predictors
        for tree in trees
    ]
    baseline = float(classifier._baseline_prediction.ravel()[0])

    def decision(encoded: np.ndarray) -> np.ndarray:
        encoded = np.ascontiguousarray(encoded, dtype=np.float64)
        raw = np.full(len(encoded), baseline)
        for predict in predictors:  # sklearn's own trees, summed in sklearn's order
            raw += predict(encoded)
        return raw

    return decision


def _numeric_block(transformer: Any, features: Sequence[str]) -> _NumericBlock:
    features = tuple(features)
    # A fitted ColumnTransformer holds "passthrough" as an identity FunctionTransformer.
    if transformer == "passthrough" or (isinstance(transformer, FunctionTransformer) and transformer.func is None):
        return _NumericBlock(features, None, np.array([], dtype=np.intp), None, None)
    steps = [step for _, step in transformer.steps] if isinstance(transformer, Pipeline) else [transformer]
    if not (len(steps) == 2 and isinstance(steps[0], SimpleImputer) and isinstance(steps[1], StandardScaler)):
        raise Uncompilable(f"numeric preprocessing {transformer!r} is not SimpleImputer + StandardScaler")
    imputer, scaler = steps
    if np.isnan(imputer.statistics_).any() or not np.isnan(imputer.missing_values):
        raise Uncompilable("an imputer that drops all-missing columns or imputes non-NaN markers is not compiled")
    indicated = imputer.indicator_.features_ if imputer.add_indicator else np.array([], dtype=np.intp)
    return _NumericBlock(features, imputer.statistics_.copy(), np.asarray(indicated), scaler.mean_, scaler.scale_)


def _one_hot_block(encoder: Any, features: Sequence[str]) -> _OneHotBlock:
    if not isinstance(encoder, OneHotEncoder) or encoder.handle_unknown != "ignore" or encoder.drop is not None:
        raise Uncompilable(f"categorical preprocessing {encoder!r} is not OneHotEncoder(handle_unknown='ignore')")
    if encoder.min_frequency is not None or encoder.max_categories is not None:
        raise Uncompilable("infrequent-category grouping is not compiled")
    tables = tuple({_category_key(c): i for i, c in enumerate(categories)} for categories in encoder.categories_)
    return _OneHotBlock(tuple(features), tables, tuple(len(c) for c in encoder.categories_))


def _preprocessing(preprocess: Any) -> tuple[_NumericBlock, _OneHotBlock]:
    if not isinstance(preprocess, ColumnTransformer):
        raise Uncompilable(f"preprocessing {preprocess!r} is not a ColumnTransformer")
    numeric = one_hot = None
    for name, transformer, columns in preprocess.transformers_:
        if transformer == "drop" or len(columns) == 0:
            continue
        if name == "numeric" and numeric is None:
            numeric = _numeric_block(transformer, columns)
        elif name == "categorical" and one_hot is None:
            one_hot = _one_hot_block(transformer, columns)
        else:
            raise Uncompilable(f"column transformer part {name!r} is not compiled")
    numeric = numeric or _NumericBlock((), None, np.array([], dtype=np.intp), None, None)
    return numeric, one_hot or _OneHotBlock((), (), ())


def _calibrators(estimator: Any) -> tuple[Pipeline, list[tuple[float, float]]]:
    if isinstance(estimator, Pipeline):
        return estimator, []
    if not isinstance(estimator, CalibratedClassifierCV) or estimator.method != "sigmoid":
        raise Uncompilable(f"{type(estimator).__name__} is not a sigmoid-calibrated classifier")
    fitted = estimator.calibrated_classifiers_
    inner = {id(c.estimator) for c in fitted}
    if len(inner) != 1 or not isinstance(fitted[0].estimator, FrozenEstimator):
        raise Uncompilable("only one frozen pipeline under the calibration is compiled")
    if list(fitted[0].classes) != [0, 1]:
        raise Uncompilable("only the binary 0/1 target is compiled")
    return fitted[0].estimator.estimator, [(float(c.calibrators[0].a_), float(c.calibrators[0].b_)) for c in fitted]


def compile_model(model: ChurnModel) -> CompiledModel:
    """The model as numpy arrays; :class:`Uncompilable` if its estimator has another shape."""
    pipeline, calibrators = _calibrators(model.estimator)
    if not isinstance(pipeline, Pipeline) or len(pipeline.steps) != 2:
        raise Uncompilable("the calibrated estimator is not a two-step Pipeline")
    numeric, one_hot = _preprocessing(pipeline.steps[0][1])
    if sorted(numeric.features + one_hot.features) != sorted(model.feature_names):
        raise Uncompilable("the preprocessing does not take exactly the model's features")
    classifier = pipeline.steps[1][1]
    if list(classifier.classes_) != [0, 1]:
        raise Uncompilable("only the binary 0/1 target is compiled")
    if isinstance(classifier, LogisticRegression):
        decision = _linear_decision(classifier)
    elif isinstance(classifier, HistGradientBoostingClassifier):
        decision = _boosting_decision(classifier)
    else:
        raise Uncompilable(f"classifier {type(classifier).__name__} is not compiled")
    return CompiledModel(model, numeric, one_hot, _Head(decision, calibrators))


def probe_rows(model: ChurnModel, compiled: CompiledModel, n_rows: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """Rows that reach every branch of the encoding: reference values, missing values, zeros, large and negative
    numbers, every known category, and an unknown one."""
    rng = np.random.default_rng(seed)
    categories = compiled.categories
    rows = [dict(model.reference_values)]
    for _ in range(n_rows - 1):
        row = {}
        for name in model.feature_names:
            reference = model.reference_values[name]
            if name in categories:
                known = [c for c in categories[name] if c is not _NAN_KEY]
                choices = [*known, None, "__never_seen__"]
            else:
                choices = [reference, None, 0.0, 3.0 * float(reference) + 1.0, -7.5, rng.exponential(50.0)]
            row[name] = choices[rng.integers(len(choices))]
        rows.append(row)
    return rows


def verify(compiled: CompiledModel, rows: Sequence[Mapping[str, Any]]) -> float:
    """Largest |compiled - sklearn| probability over ``rows``; raises Uncompilable beyond VERIFY_TOLERANCE."""
    model = compiled.model
    strings = compiled.string_features
    frame = pd.DataFrame(
        {
            name: pd.Series([row[name] for row in rows], dtype=object if name in strings else np.float64)
            for name in model.feature_names
        }
    )
    expected = model.predict_proba(frame)
    difference = float(np.max(np.abs(compiled.proba(compiled.encode_rows(rows)) - expected)))
    if not difference <= VERIFY_TOLERANCE:
        raise Uncompilable(f"compiled probabilities differ from predict_proba by {difference:.3g}")
    return difference


def compile_verified(model: ChurnModel) -> CompiledModel | None:
    """The compiled model if it compiles and agrees with sklearn on probe rows, else None (logged)."""
    try:
        compiled = compile_model(model)
        difference = verify(compiled, probe_rows(model, compiled))
    except Uncompilable as exc:
        logger.warning("scoring with sklearn: the model is not compiled (%s)", exc)
        return None
    logger.info("scoring with the compiled model (max |difference| to predict_proba %.2g)", difference)
    return compiled
