"""Logging a build or a sweep to MLflow: the plan as parameters, every figure as a metric, the files as artifacts.

MLflow is an optional extra (``pip install 'edgeprune[mlflow]'``) imported only here and only
when ``--mlflow`` is given. A run is logged once the build folder is in place, so its
artifacts are the files that ship.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

from edgeprune.errors import InputError, first_line

DEFAULT_STORE = "mlruns"  # --mlflow without a value and no MLFLOW_TRACKING_URI: ./mlruns, a file store
EXPERIMENT = "edgeprune"
INSTALL = "pip install 'edgeprune[mlflow]'"
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_KEY = re.compile(r"[^A-Za-z0-9_\-. /]")
_BATCH = 500
REACH_S = 10.0  # the health check's whole deadline
# the databases MLflow's SQLAlchemy store takes besides SQLite, and Databricks' own workspaces
DATABASE_SCHEMES = ("postgresql", "mysql", "mssql", "databricks", "databricks-uc", "uc")


def tracking_uri(value: str | None) -> str:
    """Returns the tracking URI ``--mlflow VALUE`` means.

    No value: MLFLOW_TRACKING_URI when set, else the file store ./mlruns. A path without a
    scheme is a file store at that folder; anything else (file:, http(s):, sqlite:) is MLflow's.
    """
    value = (value or "").strip() or os.environ.get("MLFLOW_TRACKING_URI", "") or DEFAULT_STORE
    if value.startswith("file:") and not value.startswith("file:/"):
        value = value[len("file:"):]  # file:./mlruns, a relative folder
    elif _SCHEME.match(value) and not re.match(r"^[A-Za-z]:[\\/]", value):
        return value
    return Path(value).expanduser().resolve().as_uri()


def check_tracking(value: str | None) -> str:
    """Returns the tracking URI after checking MLflow is installed and a file store can be written.

    InputError (exit 2), before any build work, when MLflow is missing or the folder is not writable.
    """
    uri = tracking_uri(value)
    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise InputError(f"--mlflow needs MLflow, which is not installed: {INSTALL}") from None
    scheme = uri.split(":", 1)[0].lower()
    if scheme == "file":
        _check_store_folder(_file_path(uri))
    elif scheme in ("http", "https"):
        _check_reachable(uri)
    elif scheme == "sqlite":
        _check_sqlite(uri)
    elif scheme not in DATABASE_SCHEMES:
        raise InputError(f"--mlflow {uri}: MLflow keeps no runs at a {scheme}: URI; give a folder, "
                         f"http(s)://HOST:PORT of a tracking server, or a database ({', '.join(DATABASE_SCHEMES)})")
    return uri


def _check_store_folder(folder: Path) -> None:
    from edgeprune.output import check_writable

    if folder.exists() and not folder.is_dir():
        raise InputError(f"--mlflow {folder} is a file; a file store is a folder (./mlruns by default)")
    check_writable(folder)


def _check_sqlite(uri: str) -> None:
    """Raises InputError when the SQLite database of ``sqlite:///PATH`` could not be created or written."""
    from edgeprune.output import check_writable

    path = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
    if path is None or not str(path) or str(path) == ":memory:":
        raise InputError(f"--mlflow {uri}: give the database file as sqlite:///PATH (an in-memory one keeps nothing)")
    if path.is_dir():
        raise InputError(f"--mlflow {uri}: {path} is a folder, not a database file")
    try:
        check_writable(path)
    except InputError as exc:
        raise InputError(f"--mlflow {uri}: {exc}") from None


@lru_cache(maxsize=8)
def _check_reachable(uri: str) -> None:
    """Raises InputError when nothing answers at a tracking server's URI (any HTTP answer will do).

    Checked before the build, within a deadline: MLflow's own client retries for minutes before it gives up.
    A server that answered is not asked again by the same process (the CLI checks before it imports the
    pipeline, and the pipeline checks for callers of the Python API).
    """
    from edgeprune import web

    try:
        web.request(uri.rstrip("/") + "/health", deadline_s=REACH_S, max_reply_bytes=1 << 20)
    except (web.WebError, ValueError) as exc:
        raise InputError(f"--mlflow: no MLflow tracking server answers at {uri} ({exc})") from None


def _file_path(uri: str) -> Path:
    from urllib.parse import unquote, urlparse

    return Path(unquote(urlparse(uri).path))


def metric_key(parts: Iterable[str]) -> str:
    """Returns an MLflow metric name for a path of report keys (characters MLflow refuses become _)."""
    return _KEY.sub("_", ".".join(parts))[:250]


def numeric_figures(data: Any, prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, float]]:
    """Yields (dotted name, value) for every number in a report, flattened; true/false count as 1/0.

    A list item with a name (a budget, a layer, a sweep candidate, a slice) is keyed by it,
    any other by its index: ``budgets.size_mb.value``, ``layers.rows./classifier/Gemm.built_ms``.
    """
    if isinstance(data, bool):
        yield metric_key(prefix), float(data)
    elif isinstance(data, (int, float)):
        yield metric_key(prefix), float(data)
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from numeric_figures(value, (*prefix, str(key)))
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from numeric_figures(item, (*prefix, _item_name(item, i)))


def _item_name(item: Any, index: int) -> str:
    if isinstance(item, dict):
        for key in ("name", "layer", "label"):
            if isinstance(item.get(key), str):
                return item[key]
        if isinstance(item.get("candidate"), dict) and isinstance(item["candidate"].get("label"), str):
            return item["candidate"]["label"]
    return str(index)


def report_metrics(report: dict) -> dict[str, float]:
    """Returns the metrics a build logs: every numeric figure of report.json but its schema version."""
    skip = {"schema"}
    return dict(numeric_figures({k: v for k, v in report.items() if k not in skip}))


def build_params(report: dict, options: dict[str, Any]) -> dict[str, str]:
    """Returns the parameters a build logs: the plan as applied (``plan.*``) and the options given (``option.*``)."""
    s, a = report.get("strategy", {}), report.get("artifact", {})
    params = {"workload": report.get("workload"), "profile": report.get("profile"),
              "plan.strategy": s.get("kind"), "plan.sparsity": s.get("sparsity"),
              "plan.quantization": s.get("quantization"), "plan.criterion": s.get("criterion"), "plan.nm": s.get("nm"),
              "plan.format": a.get("format"), "plan.precision": a.get("precision"),
              "latency.source": report.get("latency", {}).get("source"),
              "latency.device": report.get("latency", {}).get("device")}
    for b in report.get("budgets", []):
        params[f"budget.{b['name']}"] = b["limit"]
    for key, value in options.items():
        params[f"option.{key}"] = value
    return {k: str(v)[:500] for k, v in params.items() if v is not None}


def log_run(uri: str, run_name: str, params: dict[str, str], metrics: dict[str, float], tags: dict[str, str],
            files: Iterable[Path]) -> str:
    """Returns the id of a new MLflow run holding the parameters, metrics, tags and files given.

    InputError when the tracking store refuses (an unreachable server, a read-only folder).
    """
    if uri.startswith("file:"):
        # MLflow 3 keeps its file store for those who ask for it; a file: URI given to us is that ask.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # each of MLflow's HTTP requests ends within its timeout, retried twice at most (its defaults,
    # 120 s and 7 retries with back-off, keep a build waiting for many minutes on a server gone away)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    from mlflow.entities import Metric, Param
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    try:
        client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=run_name, tags={k: v[:5000] for k, v in tags.items()})
    except (MlflowException, OSError) as exc:
        raise InputError(f"cannot log to MLflow at {uri}: {first_line(exc)}") from None
    run_id = run.info.run_id
    status = "FAILED"
    try:
        import time

        now = int(time.time() * 1000)
        items = [Param(k, v) for k, v in params.items()]
        for start in range(0, len(items), 100):
            client.log_batch(run_id, params=items[start:start + 100])
        values = [Metric(k, v, now, 0) for k, v in metrics.items()]
        for start in range(0, len(values), _BATCH):
            client.log_batch(run_id, metrics=values[start:start + _BATCH])
        for path in files:
            path = Path(path)
            if path.is_dir():
                client.log_artifacts(run_id, str(path), artifact_path=path.name)
            elif path.is_file():
                client.log_artifact(run_id, str(path))
        status = "FINISHED"
    except (MlflowException, OSError) as exc:
        raise InputError(f"cannot log to MLflow at {uri}: {first_line(exc)}") from None
    finally:
        try:
            client.set_terminated(run_id, status)
        except (MlflowException, OSError):
            pass
    return run_id


def log_build(report: dict, options: dict[str, Any], folder: Path, uri: str) -> str:
    """Returns the MLflow run id of a finished build: plan and options, every report figure, artifact and reports."""
    files = [Path(f) for f in report.get("artifact", {}).get("files", [])] or [Path(report["artifact"]["path"])]
    files += [folder / name for name in ("report.json", "report.md", "report.html")]
    s = report.get("strategy", {})
    run_name = f"{report.get('workload')} {report.get('profile')} {s.get('kind')} {s.get('sparsity')}"
    tags = {"edgeprune.kind": "build", "edgeprune.passed": str(bool(report.get("passed"))).lower(),
            "edgeprune.version": str(report.get("edgeprune_version")),
            "edgeprune.reasons": "\n".join(s.get("reasons", []))}
    return log_run(uri, run_name, build_params(report, options), report_metrics(report), tags,
                   list(dict.fromkeys(files)))


def log_sweep(summary: dict, options: dict[str, Any], folder: Path, uri: str) -> str:
    """Returns the MLflow run id of a sweep: its options, every candidate's figures, its table, plot and page."""
    params = {f"option.{k}": str(v)[:500] for k, v in options.items() if v is not None}
    params["metric"] = str(summary.get("metric"))
    metrics = dict(numeric_figures(summary.get("candidates", []), ("candidates",)))
    files = [folder / name for name in ("sweep.json", "sweep.md", "pareto.png", "report.html")]
    tags = {"edgeprune.kind": "sweep", "edgeprune.title": str(summary.get("title"))}
    return log_run(uri, f"sweep {summary.get('title')}", params, metrics, tags, files)
