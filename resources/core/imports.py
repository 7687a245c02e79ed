"""Imports made cheaper than their libraries make them.

``import pyarrow.dataset`` imports pandas: the module's init builds one scalar (``pa.scalar(True)``), and
pyarrow asks pandas whether any scalar is array-like, importing it to ask. That is 0.2-0.3 s of every
process's start-up (pandas 3.1, pyarrow 25) for a library the scoring path never calls.
``import_pyarrow_dataset`` imports the module with pandas hidden, so pyarrow records pandas as absent,
and tells pyarrow the truth the moment anything imports pandas: from then on pyarrow converts pandas
objects exactly as it would have (``pa.array(series)`` turns NaN into null, categoricals into
dictionaries). Anything that needs pandas imports it as before.
"""

from __future__ import annotations

import importlib.util
import sys
from importlib.abc import Loader, MetaPathFinder
from types import ModuleType
from typing import Any


def import_pyarrow_dataset() -> ModuleType:
    """``pyarrow.dataset``, imported without importing pandas when nothing has imported it yet."""
    if "pyarrow.dataset" in sys.modules or "pandas" in sys.modules:
        import pyarrow.dataset

        return pyarrow.dataset
    hide = _HidePandas()
    sys.meta_path.insert(0, hide)
    try:
        import pyarrow.dataset
    finally:
        sys.meta_path.remove(hide)
    sys.meta_path.insert(0, _TellPyarrowWhenPandasLoads())
    return pyarrow.dataset


class _HidePandas(MetaPathFinder):
    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas":
            raise ModuleNotFoundError("pandas is hidden while pyarrow.dataset is imported", name=name)


class _TellPyarrowWhenPandasLoads(MetaPathFinder):
    """Finds pandas the usual way, once, with a loader that tells pyarrow when pandas has loaded."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pandas":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenTellPyarrow(spec.loader)
        return spec


class _ThenTellPyarrow(Loader):
    def __init__(self, loader: Loader) -> None:
        self._loader = loader

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        import pyarrow.lib

        pyarrow.lib._pandas_api.pd  # noqa: B018 (the property imports pandas into pyarrow's shim)

    def __getattr__(self, name: str) -> Any:  # resources, source and the rest: the real loader's
        return getattr(self._loader, name)
