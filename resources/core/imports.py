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

import contextlib
import sys
import threading
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
    """Hides pandas from the thread that imports pyarrow.dataset; other threads import it as usual."""

    def __init__(self) -> None:
        self._thread = threading.get_ident()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "pandas" and threading.get_ident() == self._thread:
            raise ModuleNotFoundError("pandas is hidden while pyarrow.dataset is imported", name=name)


class _TellPyarrowWhenPandasLoads(MetaPathFinder):
    """Finds pandas with the finders after it, and gives its spec a loader that tells pyarrow once pandas has
    loaded. It stays in place until then: a ``find_spec`` probe (which imports nothing) does not remove it."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if name != "pandas" or self not in sys.meta_path:
            return None
        for finder in sys.meta_path[sys.meta_path.index(self) + 1 :]:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _ThenTellPyarrow(spec.loader, self)
                return spec
        return None


class _ThenTellPyarrow(Loader):
    def __init__(self, loader: Loader, finder: MetaPathFinder) -> None:
        self._loader = loader
        self._finder = finder

    def create_module(self, spec: Any) -> ModuleType | None:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        with contextlib.suppress(ValueError):  # another thread's import got there first
            sys.meta_path.remove(self._finder)
        import pyarrow.lib

        pyarrow.lib._pandas_api.pd  # noqa: B018 (the property imports pandas into pyarrow's shim)

    def __getattr__(self, name: str) -> Any:  # resources, source and the rest: the real loader's
        return getattr(self._loader, name)
