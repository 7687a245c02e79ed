"""A scoring worker inside a model environment: run by that environment's interpreter, not ours.

Imports nothing of ml_assets (which the environment does not have): pyarrow, the model's own
libraries, and ``_flavors.py`` (loaded by path from beside this file). It talks to the scoring
core over an inherited socket with ``multiprocessing.connection`` framing:

- after loading: ``ok`` + the output schema (Arrow IPC; empty for pyfunc), or ``er`` + the reason;
- native mode reads no MLmodel and imports no MLflow: PARAMS_JSON is the model file and how it was
  written, as the parent read (and checked) it from the MLmodel (``_flavors.flavor_files``);
- per request (one Arrow IPC stream holding a batch of the model's input columns): ``ok`` + an
  Arrow IPC stream of the prediction columns, or ``er`` + the error; an empty request ends it.

Usage: python -I _env_worker.py FD MODE(pyfunc|native) MODEL_DIR THREADS INPUT_DTYPE PARAMS_JSON
"""

from __future__ import annotations

import importlib.util
import json
import signal
import sys
import traceback
from pathlib import Path
from typing import Any


def _load_flavors() -> Any:
    spec = importlib.util.spec_from_file_location("_ml_assets_flavors", Path(__file__).with_name("_flavors.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _ipc(table: Any) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _error(exc: BaseException) -> bytes:
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    return b"er" + text[-4000:].encode()


def main(argv: list[str]) -> int:
    # The parent stops it (an empty request, or the socket closing when the parent dies).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from multiprocessing.connection import Connection

    fd, mode, model_dir, threads, input_dtype = int(argv[1]), argv[2], argv[3], int(argv[4]), argv[5]
    params = json.loads(argv[6]) or None
    conn = Connection(fd)
    try:
        import numpy as np
        import pyarrow as pa

        flavors = _load_flavors()
        if mode == "native":
            # One model and one request at a time: each matrix is split across the threads, and a Booster's
            # library is imported without scikit-learn and pandas (see _flavors.load_native).
            predictor = flavors.load_native(
                params, input_dtype=np.dtype(input_dtype), threads=threads, parallel="split", lean_imports=True
            )
            schema = predictor.output_schema
            if predictor.classes is not None:
                schema = schema.with_metadata({"ml_assets.classes": json.dumps(predictor.classes)})
            ready = schema.serialize().to_pybytes()

            def predict(batch: Any) -> Any:
                return pa.Table.from_batches([predictor.score(batch)])

        else:
            import mlflow.pyfunc

            model = mlflow.pyfunc.load_model(model_dir)
            ready = b""

            def predict(batch: Any) -> Any:
                frame = batch.to_pandas()
                prediction = model.predict(frame, params=params) if params else model.predict(frame)
                columns = flavors.predictions_to_columns(prediction, batch.num_rows)
                return pa.table({k: pa.array(v) for k, v in columns.items()})

    except Exception as exc:  # noqa: BLE001 - any load failure is reported to the parent, which raises
        conn.send_bytes(_error(exc))
        return 0
    conn.send_bytes(b"ok" + ready)
    while True:
        try:
            message = conn.recv_bytes()
        except (EOFError, OSError):
            return 0
        if not message:
            return 0
        try:
            batch = pa.ipc.open_stream(message).read_next_batch()
            conn.send_bytes(b"ok" + _ipc(predict(batch)))
        except Exception as exc:  # noqa: BLE001 - the parent turns it into a ScoringError
            conn.send_bytes(_error(exc))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
