"""Flattens the PMML tree ensembles most tools write into arrays a small Java loop can walk.

Covers a classification ``TreeModel``, or a ``MiningModel`` whose segments (all ``<True/>``)
are such trees combined by ``average`` or ``sum``; predicates ``SimplePredicate`` on continuous
numeric fields, ``True`` and ``False``; outputs ``probability`` of named classes. Anything
else raises ``Unsupported`` and the model is scored by pmml4s alone. Rows with missing values,
and trees that end on a node with no true child, are handed back to pmml4s by the Java side,
so missing-value strategies are never re-implemented here.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import numpy as np

OPS = {"True": 0, "False": 1, "lessThan": 2, "lessOrEqual": 3, "greaterThan": 4, "greaterOrEqual": 5}
OPS.update({"equal": 6, "notEqual": 7})
_NUMERIC = {"double", "float", "integer", "real"}
_IGNORED_MODEL_CHILDREN = {"MiningSchema", "Extension", "ModelStats", "ModelExplanation", "ModelVerification"}


class Unsupported(Exception):
    """The PMML uses something the flattened evaluator does not cover."""


@dataclass
class FlatForest:
    field: np.ndarray
    op: np.ndarray
    value: np.ndarray
    first_child: np.ndarray
    next_sibling: np.ndarray
    dist: np.ndarray
    probs: np.ndarray
    roots: np.ndarray
    n_classes: int
    average: bool
    output_class_index: list[int]
    """For each output field, in order: the class whose probability it is."""


def _local(tag: str) -> str:
    return tag.rsplit("}", 1)[-1]


def _children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if _local(c.tag) == name]


def _check_mining_schema(model: ET.Element, active: set[str]) -> None:
    for schema in _children(model, "MiningSchema"):
        for mf in _children(schema, "MiningField"):
            usage = mf.get("usageType", "active")
            extra = set(mf.attrib) - {"name", "usageType", "optype"}
            if usage == "active" and (extra or mf.get("name") not in active):
                raise Unsupported(f"MiningField {mf.get('name')!r} with {sorted(extra) or 'an unknown field'}")


def flatten(pmml_path: Path, input_names: list[str], output_names: list[str]) -> FlatForest:
    root = ET.parse(pmml_path).getroot()
    models = [c for c in root if _local(c.tag) not in {"Header", "DataDictionary", "MiningBuildTask", "Extension"}]
    if len(models) != 1:
        raise Unsupported(f"top-level elements {[_local(m.tag) for m in models]}")
    model = models[0]
    if _local(model.tag) not in {"MiningModel", "TreeModel"} or model.get("functionName") != "classification":
        raise Unsupported(f"{_local(model.tag)} {model.get('functionName')}")
    fields = {}
    for df in _children(_children(root, "DataDictionary")[0], "DataField"):
        fields[df.get("name")] = df
    index = {name: i for i, name in enumerate(input_names)}
    for name in input_names:
        df = fields.get(name)
        if df is None or df.get("optype") != "continuous" or df.get("dataType") not in _NUMERIC:
            raise Unsupported(f"input field {name!r} is not a continuous number")
        if _children(df, "Interval") or _children(df, "Value"):
            raise Unsupported(f"input field {name!r} declares intervals or values")
    targets = [
        mf.get("name")
        for mf in _children(_children(model, "MiningSchema")[0], "MiningField")
        if mf.get("usageType") in ("target", "predicted")
    ]
    if len(targets) != 1 or targets[0] not in fields:
        raise Unsupported("not exactly one target field")
    classes = [v.get("value") for v in _children(fields[targets[0]], "Value") if v.get("property", "valid") == "valid"]
    if not classes:
        raise Unsupported("target field lists no classes")
    class_index = {c: i for i, c in enumerate(classes)}
    outputs = _children(model, "Output")
    if len(outputs) != 1:
        raise Unsupported("no Output element")
    output_class_index = []
    out_fields = _children(outputs[0], "OutputField")
    if [f.get("name") for f in out_fields] != output_names:
        raise Unsupported("output fields differ from the evaluator's")
    for of in out_fields:
        if of.get("feature") != "probability" or of.get("value") not in class_index or of.get("segmentId"):
            raise Unsupported(f"output field {of.get('name')!r}")
        output_class_index.append(class_index[of.get("value")])
    active = set(input_names)
    _check_mining_schema(model, active)
    if _local(model.tag) == "TreeModel":
        trees, average = [model], True
        extra = {_local(c.tag) for c in model} - _IGNORED_MODEL_CHILDREN - {"Output", "Node"}
    else:
        extra = {_local(c.tag) for c in model} - _IGNORED_MODEL_CHILDREN - {"Output", "Segmentation"}
        segmentation = _children(model, "Segmentation")[0]
        method = segmentation.get("multipleModelMethod")
        if method not in ("average", "sum"):
            raise Unsupported(f"multipleModelMethod {method!r}")
        average = method == "average"
        trees = []
        for segment in _children(segmentation, "Segment"):
            kids = list(segment)
            if len(kids) != 2 or _local(kids[0].tag) != "True" or _local(kids[1].tag) != "TreeModel":
                raise Unsupported("a segment that is not <True/> + TreeModel")
            trees.append(kids[1])
    if extra:
        raise Unsupported(f"model elements {sorted(extra)}")
    arrays: dict[str, list] = {k: [] for k in ("field", "op", "value", "first", "next", "dist")}
    probs: list[list[float]] = []
    roots = []
    for tree in trees:
        if tree.get("functionName") != "classification":
            raise Unsupported("a segment tree that is not a classifier")
        tree_extra = {_local(c.tag) for c in tree} - _IGNORED_MODEL_CHILDREN - {"Node"}
        if tree_extra:
            raise Unsupported(f"tree elements {sorted(tree_extra)}")
        _check_mining_schema(tree, active)
        roots.append(_add_node(_children(tree, "Node")[0], arrays, probs, index, class_index))
    n_classes = len(classes)
    return FlatForest(
        field=np.asarray(arrays["field"], np.int32),
        op=np.asarray(arrays["op"], np.int8),
        value=np.asarray(arrays["value"], np.float64),
        first_child=np.asarray(arrays["first"], np.int32),
        next_sibling=np.asarray(arrays["next"], np.int32),
        dist=np.asarray(arrays["dist"], np.int32),
        probs=np.asarray(probs, np.float64).reshape(-1) if probs else np.zeros(0),
        roots=np.asarray(roots, np.int32),
        n_classes=n_classes,
        average=average,
        output_class_index=output_class_index,
    )


def _add_node(node: ET.Element, arrays: dict[str, list], probs: list[list[float]], index: dict, classes: dict) -> int:
    """Appends ``node``'s subtree breadth-first (siblings get consecutive ids); returns the root's id."""
    base = len(arrays["field"])
    links: dict[int, int] = {}
    order = [node]
    position = 0
    while position < len(order):
        element = order[position]
        node_id = base + position
        position += 1
        predicate, kids, distributions = None, [], []
        for child in element:
            tag = _local(child.tag)
            if tag == "Node":
                kids.append(child)
            elif tag == "ScoreDistribution":
                distributions.append(child)
            elif tag in OPS or tag == "SimplePredicate":
                predicate = child
            elif tag != "Extension":
                raise Unsupported(f"node element {tag}")
        if predicate is None:
            raise Unsupported("a node without a predicate")
        tag = _local(predicate.tag)
        if tag == "SimplePredicate":
            op = OPS.get(predicate.get("operator", ""))
            if op is None or op < 2 or predicate.get("field") not in index:
                raise Unsupported(f"predicate {predicate.get('operator')} on {predicate.get('field')!r}")
            arrays["field"].append(index[predicate.get("field")])
            arrays["op"].append(op)
            arrays["value"].append(float(predicate.get("value")))
        else:
            arrays["field"].append(-1)
            arrays["op"].append(OPS[tag])
            arrays["value"].append(0.0)
        first = base + len(order) if kids else -1
        arrays["first"].append(first)
        arrays["dist"].append(_distribution(distributions, probs, classes))
        order.extend(kids)
        arrays["next"].append(-1)
        for k in range(len(kids) - 1):
            links[first + k] = first + k + 1
    for node_id, sibling in links.items():
        arrays["next"][node_id] = sibling
    return base


def _distribution(distributions: list[ET.Element], probs: list[list[float]], classes: dict) -> int:
    if not distributions:
        return -1
    counts = [float(d.get("recordCount", "nan")) for d in distributions]
    total = 0.0
    for c in counts:
        total += c
    row = [0.0] * len(classes)
    for d, count in zip(distributions, counts, strict=True):
        value = d.get("value")
        if value not in classes:
            raise Unsupported(f"ScoreDistribution value {value!r} is not a class of the target")
        row[classes[value]] = float(d.get("probability")) if d.get("probability") is not None else count / total
    probs.append(row)
    return len(probs) - 1
