"""ONNX models scored in-process with onnxruntime.

Columns reach the model by name: through the graph's own input names when it has one input
per feature, otherwise through the MLflow signature (or an explicit feature list) for a
single ``[N, K]`` tensor. Classifiers converted with ZipMap get it cut off at load time, so
probabilities come back as one tensor (float or double, as the graph computes them) instead of a
Python dict per row. Outputs follow the prediction contract (``ml_assets.resources.core.predictions``):
``label`` + ``probability_<class>`` with the graph's class labels, or ``prediction``.
"""

from __future__ import annotations

import copy
import itertools
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ml_assets.resources.core.errors import ModelLoadError, SchemaMismatchError, ScoringError
from ml_assets.resources.core.models import ModelVersion
from ml_assets.resources.core.predictions import (
    PREDICTION,
    Naming,
    OutputMap,
    check_naming,
    classifier_map,
    identity_map,
)

logger = logging.getLogger(__name__)

# ONNX tensor element type names (as onnxruntime prints them) -> numpy / Arrow
_ORT_TYPES: dict[str, tuple[Any, pa.DataType]] = {
    "tensor(float)": (np.float32, pa.float32()),
    "tensor(double)": (np.float64, pa.float64()),
    "tensor(int64)": (np.int64, pa.int64()),
    "tensor(int32)": (np.int32, pa.int32()),
    "tensor(bool)": (np.bool_, pa.bool_()),
    "tensor(string)": (object, pa.string()),
}
_CLASSIFIER_OPS = {"LinearClassifier", "TreeEnsembleClassifier", "SVMClassifier", "ZipMap"}


def _model_file(path: Path, version: ModelVersion) -> Path:
    if path.is_file():
        return path
    named = version.extra.get("model_file")
    if named and (path / named).is_file():
        return path / named
    found = sorted(path.rglob("*.onnx"))
    if len(found) != 1:
        msg = f"{version.describe()}: expected one .onnx file in {path}, found {len(found)}"
        raise ModelLoadError(msg)
    return found[0]


# The twin input of a transposed feed (``_take_columns``): the original name plus this suffix.
COLUMNS_SUFFIX = "__columns"


def _take_columns(model: Any) -> bool:
    """Let a graph whose one input is a ``[N, K]`` float or double matrix take it as ``[K, N]`` instead.

    A ``[K, N]`` matrix is Arrow's columns laid end to end (``to_tensor(row_major=False)``, one copy per
    column), and onnxruntime's blocked transpose turns it into the rows the graph computes on: a third
    less CPU than building the row-major matrix in Arrow (0.23 vs 0.37 s per 20M rows x 20 float32),
    with the same values, so the same predictions. The graph gains one Transpose node in front, under
    the input's old name; nothing else changes. False (graph untouched) where that does not apply."""
    from onnx import helper

    node = _matrix_input(model)
    if node is None or not any(o.domain in ("", "ai.onnx") for o in model.opset_import):
        return False
    columns = _feed_columns(model.graph, node)
    model.graph.node.insert(0, helper.make_node("Transpose", [columns.name], [node.name], perm=[1, 0]))
    return True


def _matrix_input(model: Any) -> Any | None:
    """The graph's one input when it is an ``[N, K]`` float or double matrix of more than one column."""
    from onnx import TensorProto

    constants = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in constants]
    if len(inputs) != 1:
        return None
    tensor = inputs[0].type.tensor_type
    dims = list(tensor.shape.dim)
    if tensor.elem_type not in (TensorProto.FLOAT, TensorProto.DOUBLE) or len(dims) != 2 or dims[1].dim_value == 1:
        return None
    return inputs[0]


def _feed_columns(graph: Any, node: Any) -> Any:
    """Put the ``[K, N]`` twin of input ``node`` in its place (``COLUMNS_SUFFIX``); return the twin."""
    from onnx import helper

    tensor = node.type.tensor_type
    shape = [d.dim_param or (d.dim_value if d.HasField("dim_value") else None) for d in reversed(tensor.shape.dim)]
    columns = helper.make_tensor_value_info(node.name + COLUMNS_SUFFIX, tensor.elem_type, shape)
    position = list(graph.input).index(node)
    graph.input.remove(node)
    graph.input.insert(position, columns)
    return columns


# Linear models rewritten to read the [K, N] feed in place (``_linear_on_columns``).
_LINEAR_OPS = {"LinearClassifier", "LinearRegressor"}
_LINEAR_TRANSFORMS = {"NONE": None, "LOGISTIC": "Sigmoid", "SOFTMAX": "Softmax"}


def _linear_on_columns(model: Any) -> bool:
    """Let a graph whose one input goes straight into a linear model (through at most a Scaler) take
    the ``[K, N]`` feed of ``_take_columns`` and compute on it directly: ``W @ X^T`` in place of a
    transpose of the whole input, the per-column Scaler as ``(X^T - offset) * scale``, and the
    label as an arg-max down the classes (of two: whether the second score is above the first).
    Only the ``[C, N]`` scores are transposed back, so the node's outputs keep their names, types
    and layout for whatever follows (Cast, Normalizer, ZipMap). Half the CPU of the transpose and the
    linear kernel (0.54 vs 1.09 s per 20M rows x 20 float32, two classes). The kernels' own GEMM,
    sigmoid and arg-max, so labels are the same and scores the same to float32 rounding: bit for bit
    where the GEMM sums in the kernel's order (the tests' classifiers), a few ulps where it does not
    (one target, hundreds of features). False (graph untouched) for anything else: a one-row classifier
    (``add_second_class``), PROBIT, an input that feeds more than this, an opset too old for
    ``ArgMax``/``Softmax`` on axis 0."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    source = _matrix_input(model)
    default_opset = next((o for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if default_opset is None and model.ir_version < 7:  # too old a format to import opset 13 into
        return False
    if source is None or (default_opset is not None and default_opset.version < 13):
        return False
    tensor = source.type.tensor_type
    dims = list(tensor.shape.dim)

    def consumers(name: str) -> list[Any]:
        return [n for n in graph.node if name in n.input]

    def attributes(node: Any) -> dict[str, Any]:
        return {a.name: helper.get_attribute_value(a) for a in node.attribute}

    first = consumers(source.name)
    if len(first) != 1:
        return False
    scaler = first[0] if first[0].op_type == "Scaler" and first[0].domain == "ai.onnx.ml" else None
    if scaler is not None:
        after = consumers(scaler.output[0])
        exposed = scaler.output[0] in {o.name for o in graph.output}
        if len(after) != 1 or exposed or tensor.elem_type != TensorProto.FLOAT:
            return False
        linear = after[0]
    else:
        linear = first[0]
    if linear.op_type not in _LINEAR_OPS or linear.domain != "ai.onnx.ml":
        return False
    facts = attributes(linear)
    transform = facts.get("post_transform", b"NONE").decode()
    coefficients = np.asarray(facts.get("coefficients", []), dtype=np.float32)
    intercepts = np.asarray(facts.get("intercepts", []), dtype=np.float32)
    classifier = linear.op_type == "LinearClassifier"
    targets = len(intercepts) if classifier else int(facts.get("targets", 1))
    width = dims[1].dim_value if dims[1].HasField("dim_value") else None
    if (
        transform not in _LINEAR_TRANSFORMS
        or (not classifier and transform != "NONE")
        or (classifier and targets < 2)
        or not targets
        or coefficients.size % targets
        or (width is not None and coefficients.size != targets * width)
    ):
        return False
    features = coefficients.size // targets

    prefix = linear.name or linear.output[0]
    name = (f"{prefix}__columns_{i}" for i in itertools.count())
    nodes, constants_added = [], []

    def constant(value: Any) -> str:
        tensor_name = next(name)
        constants_added.append(numpy_helper.from_array(value, tensor_name))
        return tensor_name

    def node(op: str, inputs: list[str], output: str | None = None, **attrs: Any) -> str:
        output = output or next(name)
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    values = source.name + COLUMNS_SUFFIX  # the twin input ``_feed_columns`` puts in place below
    if tensor.elem_type == TensorProto.DOUBLE:
        values = node("Cast", [values], to=TensorProto.FLOAT)  # as the linear kernels do
    if scaler is not None:
        scaler_facts = attributes(scaler)
        offset = np.asarray(scaler_facts.get("offset", [0.0]), dtype=np.float32).reshape(-1, 1)
        scale = np.asarray(scaler_facts.get("scale", [1.0]), dtype=np.float32).reshape(-1, 1)
        if offset.shape[0] not in (1, features) or scale.shape[0] not in (1, features):
            return False
        values = node("Mul", [node("Sub", [values, constant(offset)]), constant(scale)])
    scores = node("MatMul", [constant(coefficients.reshape(targets, features)), values])
    if intercepts.size:
        if intercepts.size != targets:
            return False
        scores = node("Add", [scores, constant(intercepts.reshape(-1, 1))])
    if classifier:
        strings = [s.decode() for s in facts.get("classlabels_strings", [])]
        labels = strings or list(facts.get("classlabels_ints", []))
        if len(labels) != targets:
            return False
        if targets == 2:  # a quarter of ArgMax's time on axis 0; a tie (or NaN) gives the first class, as ArgMax
            second, first = (node("Gather", [scores, constant(np.array(j, np.int64))], axis=0) for j in (1, 0))
            position = node("Cast", [node("Greater", [second, first])], to=TensorProto.INT64)
        else:
            position = node("ArgMax", [scores], axis=0, keepdims=0)  # the first of equal scores, as the kernel
        if labels == list(range(targets)):
            node("Identity", [position], linear.output[0])
        else:
            table = np.array(labels, dtype=object if strings else np.int64)
            node("Gather", [constant(table), position], linear.output[0])
        transformed = _LINEAR_TRANSFORMS[transform]
        if transformed == "Softmax":
            scores = node("Softmax", [scores], axis=0)
        elif transformed:
            scores = node(transformed, [scores])
        if len(linear.output) > 1:
            node("Transpose", [scores], linear.output[1], perm=[1, 0])
    else:
        node("Transpose", [scores], linear.output[0], perm=[1, 0])

    for old in (scaler, linear):
        if old is not None:
            graph.node.remove(old)
    for new in reversed(nodes):
        graph.node.insert(0, new)
    graph.initializer.extend(constants_added)
    _feed_columns(graph, source)
    if default_opset is None:
        model.opset_import.append(helper.make_opsetid("", 13))
    return True


def _has_subgraph(graph: Any) -> bool:
    """Whether a node of ``graph`` holds a graph of its own (If, Loop, Scan), which may read any name around it."""
    from onnx import AttributeProto

    return any(a.type in (AttributeProto.GRAPH, AttributeProto.GRAPHS) for n in graph.node for a in n.attribute)


def _outputs_by_class(model: Any) -> frozenset[str]:
    """Drop each final ``Transpose`` (``perm=[1, 0]``) whose output is a graph output and nothing else's input,
    so that output comes back ``[C, N]``: one row per class, the layout the linear rewrite computes in. The
    scorer transposes it back as a view (``OnnxScorer._run``), and each class's column is then a contiguous
    row, handed to Arrow without a copy. Before, onnxruntime transposed ``[C, N]`` into rows and the scorer
    copied each strided column out of them: 0.24 ms of a 131,072-row chunk's ~1.5-2.4 ms (the benchmark's lr,
    default outputs, one thread). Returns the names of the outputs so left; the same values either way."""
    from onnx import helper

    graph = model.graph
    if _has_subgraph(graph):
        return frozenset()  # a subgraph may read any outer name: leave the graph as it is
    outputs = {o.name: o for o in graph.output}
    producers = {name: n for n in graph.node for name in n.output}
    left = set()
    for node in list(graph.node):
        if node.op_type != "Transpose" or node.domain not in ("", "ai.onnx") or node.output[0] not in outputs:
            continue
        perm = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "perm"), None)
        source, target = node.input[0], node.output[0]
        producer = producers.get(source)
        readers = [n for n in graph.node if source in n.input or target in n.input]
        if list(perm or []) != [1, 0] or producer is None or source in outputs or readers != [node]:
            continue
        producer.output[list(producer.output).index(source)] = target
        graph.node.remove(node)
        dims = outputs[target].type.tensor_type.shape.dim
        if len(dims) == 2:  # declared [N, C]: now [C, N]
            rows = copy.deepcopy(dims[0])
            dims[0].CopyFrom(dims[1])
            dims[1].CopyFrom(rows)
        for info in [v for v in graph.value_info if v.name == source]:
            graph.value_info.remove(info)
        left.add(target)
    return frozenset(left)


def _pruned(model: Any, outputs: list[str]) -> Any | None:
    """A copy of ``model`` that computes only ``outputs`` (and the nodes they need); None where every
    node is needed, or where it cannot tell (a node with a subgraph may read any outer name).
    onnxruntime runs every node of a graph whatever outputs a run asks for (microsoft/onnxruntime#16483):
    without this, a classifier scored for its probabilities alone still computes its label per chunk."""
    from onnx import ModelProto

    graph = model.graph
    if _has_subgraph(graph):
        return None
    needed, kept = set(outputs), []
    for node in reversed(graph.node):  # a valid graph lists producers before their consumers
        if needed.intersection(node.output):
            kept.append(node)
            needed.update(node.input)
    if len(kept) == len(graph.node):
        return None
    pruned = ModelProto()
    pruned.CopyFrom(model)
    del pruned.graph.node[:]
    pruned.graph.node.extend(reversed(kept))
    del pruned.graph.output[:]
    pruned.graph.output.extend(o for o in graph.output if o.name in outputs)
    inputs = {i.name for i in graph.input}  # all stay: the feeds do not change
    del pruned.graph.initializer[:]
    pruned.graph.initializer.extend(i for i in graph.initializer if i.name in needed or i.name in inputs)
    return pruned


def _strip_zipmap(model: Any) -> dict[str, list[Any]]:
    """Make every ZipMap's input a graph output in its place; return class labels per output."""
    graph = model.graph
    labels: dict[str, list[Any]] = {}
    outputs = {o.name: o for o in graph.output}
    inferred: dict[str, int] | None = None
    for node in list(graph.node):
        attrs = {a.name: a for a in node.attribute}
        classes = None
        for key in ("classlabels_int64s", "classlabels_ints", "classlabels_strings"):
            if key in attrs:
                values = attrs[key].ints if "strings" not in key else [s.decode() for s in attrs[key].strings]
                classes = list(values)
        if node.op_type == "ZipMap" and node.output[0] in outputs:
            from onnx import TensorProto, helper

            if inferred is None:
                inferred = _element_types(model)
            # A double pipeline (skl2onnx to_onnx on float64) feeds ZipMap doubles: keep their type.
            element = inferred.get(node.input[0], TensorProto.FLOAT)
            old = outputs[node.output[0]]
            position = list(graph.output).index(old)
            graph.output.remove(old)
            graph.output.insert(position, helper.make_tensor_value_info(node.input[0], element, None))
            graph.node.remove(node)
            labels[node.input[0]] = classes or []
        elif node.op_type in _CLASSIFIER_OPS and classes and len(node.output) > 1:
            labels.setdefault(node.output[1], classes)
    return labels or _classes_in_standard_ops(graph)


def _classes_in_standard_ops(graph: Any) -> dict[str, list[Any]]:
    """The class labels of a classifier written in standard ops, as skl2onnx writes float64 models (the
    ai.onnx.ml classifiers take float32 only): its label is ``ArrayFeatureExtractor(classes, ArgMax(...))``
    with the classes a constant, and they label the float output whose name says probabilities. Without
    this, such a graph exported without ZipMap would be named as a regressor's outputs."""
    from onnx import numpy_helper

    probabilities = [o.name for o in graph.output if "prob" in o.name.lower()]
    if len(probabilities) != 1:
        return {}
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "ArrayFeatureExtractor" and node.input[0] in constants:
            classes = numpy_helper.to_array(constants[node.input[0]]).ravel().tolist()
            return {probabilities[0]: [c.decode() if isinstance(c, bytes) else c for c in classes]}
    return {}


def _element_types(model: Any) -> dict[str, int]:
    """Tensor element type of every value shape inference can tell."""
    from onnx import shape_inference

    try:
        graph = shape_inference.infer_shapes(model).graph
    except Exception:  # noqa: BLE001 - inference is best effort; ZipMap inputs then default to float
        return {}
    values = [*graph.value_info, *graph.output, *graph.input]
    return {v.name: v.type.tensor_type.elem_type for v in values if v.type.tensor_type.elem_type}


@dataclass
class OnnxRuntime:
    """Loads ONNX models into onnxruntime sessions.

    Args:
        threads: intra-op threads of the session (default 1).
        parallel: chunks scored at once on the one session (default: the cores available).
            run() releases the GIL; measured on 2 cores, two single-threaded runs at once beat
            one run on two threads by 7% (forest) to 23% (logistic regression): no intra-op
            synchronisation, and reading and writing fit between the runs.
        features: the data columns, in the order of a single ``[N, K]`` model input, when the
            registry records no column signature.
        outputs: the prediction columns to keep (default all), by the names ``naming`` gives; fewer
            columns, less to write.
        naming: ``contract`` (default): ``label`` + ``probability_<class>`` with the graph's class
            labels for classifiers, ``prediction`` (``prediction_<j>`` / ``prediction_<output>``)
            otherwise; ``native``: the graph's output names (``output_label``, ``variable``, ...).
        allow_spinning: onnxruntime's own switch: idle pool threads spin instead of sleeping
            (only matters with threads > 1).
    """

    threads: int = 1
    parallel: int | None = None
    features: list[str] | None = None
    outputs: list[str] | None = None
    allow_spinning: bool = True
    naming: Naming = "contract"

    def __post_init__(self) -> None:
        check_naming(self.naming)

    def load(self, version: ModelVersion, path: Path) -> OnnxScorer:
        import onnx
        import onnxruntime as ort

        file = _model_file(Path(path), version)
        try:
            model = onnx.load(str(file))
            labels = _strip_zipmap(model)
            transposed = _linear_on_columns(model) or _take_columns(model)
            by_class = _outputs_by_class(model)
            options = ort.SessionOptions()
            options.intra_op_num_threads = self.threads
            options.inter_op_num_threads = 1
            options.add_session_config_entry("session.intra_op.allow_spinning", "1" if self.allow_spinning else "0")

            def session_of(graph: Any) -> Any:
                return ort.InferenceSession(graph.SerializeToString(), options, providers=["CPUExecutionProvider"])

            session = session_of(model)
        except Exception as exc:  # onnx and onnxruntime raise their own exception types
            msg = f"{version.describe()}: onnxruntime cannot load {file.name}: {exc}"
            raise ModelLoadError(msg) from exc
        parallel = self.parallel or len(os.sched_getaffinity(0))
        scorer = OnnxScorer(
            session,
            version,
            labels,
            transposed=transposed,
            by_class=by_class,
            features=self.features,
            outputs=self.outputs,
            parallel=parallel,
            naming=self.naming,
        )
        if (pruned := _pruned(model, scorer.needed_outputs)) is not None:
            try:
                scorer.session = session_of(pruned)
            except Exception as exc:  # noqa: BLE001 - pruning is an optimisation: keep the whole graph
                logger.warning("%s: scoring the whole graph; its pruned copy did not load: %s", version.describe(), exc)
        return scorer


class OnnxScorer:
    def __init__(
        self,
        session: Any,
        version: ModelVersion,
        labels: dict[str, list[Any]],
        *,
        transposed: bool = False,
        by_class: frozenset[str] = frozenset(),
        features: list[str] | None,
        outputs: list[str] | None,
        parallel: int,
        naming: Naming = "contract",
    ) -> None:
        self.session = session
        self.version = version
        self.concurrency = max(1, parallel)
        self._labels = labels
        self._transposed = transposed  # the one matrix input is fed as [K, N] (``_take_columns``)
        self._by_class = by_class  # outputs the graph leaves [C, N] (``_outputs_by_class``)
        self._inputs = session.get_inputs()
        self._columns, self._matrix_dtype = self._map_inputs(features)
        self._output_names = [o.name for o in session.get_outputs()]
        self.input_schema = pa.schema([pa.field(name, arrow) for name, arrow in self._columns])
        self._origin: dict[str, str] = {}  # native column -> the ONNX output it comes from
        try:
            probe = self._run(
                pa.RecordBatch.from_pylist([dict.fromkeys(self.input_schema.names)], schema=self.input_schema),
                keep=None,
                probe=True,
            ).schema
        except Exception:  # noqa: BLE001 - e.g. a OneHotEncoder refusing the probe's empty strings
            probe = self._declared_outputs()
        mapping = self._contract(probe) if naming == "contract" else identity_map(probe)
        if outputs:
            mapping = mapping.keep(outputs, what=version.describe())
        self._map = mapping = mapping.required()  # a tensor holds no nulls
        self.output_schema = mapping.schema
        self.output_note = mapping.note
        # Only ask onnxruntime for the outputs the kept columns come from.
        sources = set(mapping.sources)
        self._needed = [n for n in self._output_names if any(self._origin[c] == n for c in sources)]
        self._native_needed = [c for c in probe.names if c in sources]

    @property
    def needed_outputs(self) -> list[str]:
        """The graph outputs the kept columns come from."""
        return self._needed

    def _declared_outputs(self) -> pa.Schema:
        """The output columns from the graph's declared types and shapes, when a probe row cannot run."""
        fields = []
        for node in self.session.get_outputs():
            if node.type not in _ORT_TYPES:
                msg = f"{self.version.describe()}: output {node.name!r} of type {node.type} cannot be scored"
                raise ModelLoadError(msg)
            arrow = _ORT_TYPES[node.type][1]
            shape = (node.shape or [])[:: -1 if node.name in self._by_class else 1]
            width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
            labels = self._labels.get(node.name) or []
            if width not in (None, 1) and len(labels) != width:
                labels = list(range(width))
            if not labels:
                self._origin[node.name] = node.name
                fields.append(pa.field(node.name, arrow))
            for label in labels:
                name = f"{self._prefix(node.name)}{label}"
                self._origin[name] = node.name
                fields.append(pa.field(name, arrow))
        return pa.schema(fields)

    def _contract(self, native: pa.Schema) -> OutputMap:
        """label + probability_<class> for a classifier; prediction(_<name>) for anything else."""
        classes = self.classes
        if classes is not None:
            probability_output = next(n for n, v in self._labels.items() if v)
            columns = [f for f in native if self._origin[f.name] == probability_output]
            probabilities = dict(zip(classes, columns, strict=False))
            label = next(
                (
                    f.name
                    for f in native
                    if self._origin[f.name] != probability_output
                    and (pa.types.is_integer(f.type) or pa.types.is_string(f.type))
                ),
                None,
            )
            used = {label, *(f.name for f in probabilities.values())}
            others = [f for f in native if f.name not in used]
            return classifier_map(
                classes, probabilities=probabilities, label=label, others=others, note="classes from the ONNX graph"
            )
        outputs = {self._origin[n] for n in native.names}
        columns = []
        for f in native:
            origin = self._origin[f.name]
            if len(outputs) == 1:
                name = PREDICTION if f.name == origin else f"{PREDICTION}_{f.name[len(origin) + 1 :]}"
            else:
                name = f"{PREDICTION}_{f.name}"
            columns.append((f.name, pa.field(name, f.type)))
        return OutputMap(tuple(columns), note="a regressor (no classifier node in the ONNX graph)")

    @property
    def classes(self) -> list[Any] | None:
        """A classifier's class labels (from its ZipMap or classifier node); None for regressors."""
        return next((labels for labels in self._labels.values() if labels), None)

    def _map_inputs(self, features: list[str] | None) -> tuple[list[tuple[str, pa.DataType]], Any]:
        """The data columns the model reads, and the matrix dtype when it takes one [N, K] tensor."""
        describe = self.version.describe()
        for node in self._inputs:
            if node.type not in _ORT_TYPES:
                msg = f"{describe}: input {node.name!r} has type {node.type}; supported: {', '.join(_ORT_TYPES)}"
                raise ModelLoadError(msg)
        if len(self._inputs) > 1:
            # One input per feature: the graph's names are the column names.
            return [(n.name, _ORT_TYPES[n.type][1]) for n in self._inputs], None
        node = self._inputs[0]
        numpy_type, arrow_type = _ORT_TYPES[node.type]
        shape = node.shape[::-1] if self._transposed else node.shape
        input_name = node.name.removesuffix(COLUMNS_SUFFIX) if self._transposed else node.name
        width = shape[1] if len(shape) == 2 and isinstance(shape[1], int) else None
        names = features or (self.version.signature.input_names if self.version.signature else None)
        if not names:
            if width == 1:
                return [(node.name, arrow_type)], None
            msg = (
                f"{describe}: its single input {input_name!r} is a tensor of shape {shape} and the registry "
                "records no column signature; name the feature columns (runtime option 'features')"
            )
            raise SchemaMismatchError(msg)
        if width is not None and width != len(names):
            msg = (
                f"{describe}: input {input_name!r} takes {width} features per row but {len(names)} columns "
                f"are named ({', '.join(names[:8])}{'...' if len(names) > 8 else ''})"
            )
            raise SchemaMismatchError(msg)
        return [(name, arrow_type) for name in names], numpy_type

    def _feeds(self, batch: pa.RecordBatch) -> dict[str, np.ndarray]:
        if self._matrix_dtype is not None:
            # One C++ pass from Arrow's columns to a matrix (nulls, if let through, become NaN): [K, N] for
            # a graph that transposes it itself, else row-major [N, K].
            if self._transposed:
                matrix = np.asarray(batch.to_tensor(null_to_nan=True, row_major=False)).T
            else:
                matrix = np.asarray(batch.to_tensor(null_to_nan=True, row_major=True))
            return {self._inputs[0].name: matrix.astype(self._matrix_dtype, copy=False)}
        feeds = {}
        for node, column in zip(self._inputs, batch.columns, strict=True):
            values = column.to_numpy(zero_copy_only=False)  # a view when there are no nulls
            feeds[node.name] = values.reshape(-1, 1) if len(node.shape) == 2 else values
        return feeds

    @staticmethod
    def _prefix(output_name: str) -> str:
        return "probability_" if "prob" in output_name.lower() else f"{output_name}_"

    def _run(self, batch: pa.RecordBatch, *, keep: list[str] | None, probe: bool = False) -> pa.RecordBatch:
        if probe:
            # A zero row tells the output shapes; nulls become zeros/empty strings for it.
            batch = pa.RecordBatch.from_arrays(
                [pa.array([0 if not pa.types.is_string(f.type) else ""], f.type) for f in batch.schema],
                schema=batch.schema,
            )
        names = self._output_names if keep is None else self._needed
        results = self.session.run(names, self._feeds(batch))
        columns: dict[str, pa.Array] = {}
        for name, value in zip(names, results, strict=True):
            if isinstance(value, list):  # a sequence output we could not cut off (e.g. nested maps)
                msg = (
                    f"{self.version.describe()}: output {name!r} is a sequence of maps; only tensor outputs are scored"
                )
                raise ScoringError(msg)
            value = np.asarray(value)
            if name in self._by_class:
                value = value.T  # a view: each class's values stay one contiguous row
            if value.ndim == 2 and value.shape[1] == 1:
                value = value[:, 0]
            if value.ndim == 1:
                columns[name] = pa.array(value)
                self._origin[name] = name
                continue
            labels = self._labels.get(name) or list(range(value.shape[1]))
            if len(labels) != value.shape[1]:
                labels = list(range(value.shape[1]))
            prefix = self._prefix(name)
            for j, label in enumerate(labels):
                column = f"{prefix}{label}"
                if keep is None or column in keep:  # a column not kept is not copied out
                    columns[column] = pa.array(np.ascontiguousarray(value[:, j]))
                    self._origin[column] = name
        if keep is not None:
            columns = {c: columns[c] for c in keep}
        return pa.RecordBatch.from_pydict(columns)

    def score(self, batch: pa.RecordBatch) -> pa.RecordBatch:
        if batch.num_rows == 0:
            return pa.RecordBatch.from_pylist([], schema=self.output_schema)
        try:
            out = self._run(batch, keep=self._native_needed)
        except ScoringError:
            raise
        except Exception as exc:  # onnxruntime's errors carry the failing node's name
            msg = f"{self.version.describe()}: onnxruntime failed: {exc}"
            raise ScoringError(msg) from exc
        return self._map.apply(out)

    def close(self) -> None:
        self.session = None
