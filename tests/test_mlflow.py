"""--mlflow: a build and a sweep logged to a real MLflow file store, read back with MLflow's own client."""

import json
import os

import pytest

from edgeprune.report.mlflow_run import report_metrics, tracking_uri

from conftest import DIGITS, ROOT, run_cli

mlflow = pytest.importorskip("mlflow", reason="mlflow is an optional extra: pip install 'edgeprune[mlflow]'")


def client_for(uri: str):
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 reads file stores on request
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def only_run(client):
    experiment = client.get_experiment_by_name("edgeprune")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    return runs[0]


def test_a_build_is_logged_and_reads_back_as_its_report(tmp_path):
    uri = (tmp_path / "store").as_uri()
    out = tmp_path / "build"
    proc = run_cli("build", str(DIGITS), "--profile", "host", "--max-size-mb", "10", "-o", str(out),
                   f"--mlflow={uri}")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "report.json").read_text())
    client = client_for(uri)
    run = only_run(client)
    assert run.info.status == "FINISHED" and run.data.tags["edgeprune.passed"] == "true"
    metrics = run.data.metrics
    # every numeric figure of report.json, flattened; a few named one by one
    assert metrics == pytest.approx(report_metrics(report))
    assert metrics["latency.median_ms"] == report["latency"]["median_ms"]
    assert metrics["model.params_after"] == report["model"]["params_after"]
    assert metrics["artifact.size_bytes"] == (out / "model.onnx").stat().st_size
    assert metrics["budgets.size_mb.value"] == pytest.approx(report["artifact"]["size_bytes"] / 1e6)
    assert metrics["budgets.size_mb.met"] == 1.0 and metrics["passed"] == 1.0
    conv = next(r for r in report["layers"]["rows"] if r["ops"].startswith("Conv"))
    assert metrics[f"layers.rows.{conv['layer']}.built_ms"] == conv["built_ms"]
    params = run.data.params
    assert params["plan.strategy"] == report["strategy"]["kind"] and params["profile"] == "host"
    assert params["plan.format"] == "onnx" and params["budget.size_mb"] == "10.0"
    assert params["option.model"] == str(DIGITS)
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert names == {"model.onnx", "report.json", "report.md", "report.html"}
    stored = client.download_artifacts(run.info.run_id, "report.json", str(tmp_path))
    assert json.loads(open(stored).read()) == report


def test_a_sweep_is_logged_with_its_front_and_page(tmp_path):
    uri = (tmp_path / "store").as_uri()
    out = tmp_path / "sweep"
    proc = run_cli("sweep", str(DIGITS), "--profile", "host", "-o", str(out), "--strategies", "structured",
                   "--sparsities", "0.5", "--quantize", "none", "--json", f"--mlflow={uri}")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    page = (out / "report.html").read_text()
    assert "Pareto fronts" in page and "<svg" in page and "<script" not in page
    client = client_for(uri)
    run = only_run(client)
    for row in summary["candidates"]:
        label = row["candidate"]["label"]
        assert label in page
        assert run.data.metrics[f"candidates.{label}.latency_ms"] == row["latency_ms"]
        assert run.data.metrics[f"candidates.{label}.pareto_latency"] == float(row["pareto_latency"])
    assert run.data.params["option.strategies"] == "structured" and run.data.params["metric"] == "accuracy"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"sweep.json", "sweep.md", "pareto.png",
                                                                         "report.html"}


def test_without_mlflow_the_flag_is_one_line_and_exit_2_before_any_work(tmp_path):
    hidden = tmp_path / "no_mlflow" / "mlflow"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named mlflow')\n")
    env = {"PYTHONPATH": f"{hidden.parent}{os.pathsep}{ROOT}"}
    for args in (("build", str(DIGITS), "--profile", "host", "-o", str(tmp_path / "b"), "--mlflow"),
                 ("sweep", str(DIGITS), "--profile", "host", "-o", str(tmp_path / "s"), "--mlflow")):
        proc = run_cli(*args, env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "pip install 'edgeprune[mlflow]'" in lines[0], proc.stderr
        assert not (tmp_path / "b").exists() and not (tmp_path / "s").exists()


def test_a_tracking_server_that_does_not_answer_is_refused_before_any_work(tmp_path):
    import socket

    with socket.socket() as free:  # a port nothing listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    proc = run_cli("build", str(DIGITS), "--profile", "host", "-o", str(tmp_path / "b"),
                   f"--mlflow=http://127.0.0.1:{port}")
    assert proc.returncode == 2 and not (tmp_path / "b").exists()
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and f"no MLflow tracking server answers at http://127.0.0.1:{port}" in lines[0]


def test_the_flag_without_a_value_is_mlflow_s_env_or_a_local_file_store(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert tracking_uri("") == (tmp_path / "mlruns").as_uri()
    assert tracking_uri("runs/here") == tracking_uri("file:runs/here") == (tmp_path / "runs" / "here").as_uri()
    assert tracking_uri("http://mlflow.example:5000") == "http://mlflow.example:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///team.db")
    assert tracking_uri("") == "sqlite:///team.db"


def test_a_build_is_logged_to_a_real_tracking_server(tmp_path):
    """`mlflow server` on the loopback, as a team runs it: the run, its metrics and its files
    arrive over HTTP and read back through the server."""
    import socket
    import subprocess
    import sys
    import time

    from edgeprune import web

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
                               "--artifacts-destination", (tmp_path / "artifacts").as_uri(), "--workers", "1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:  # up when /health answers
            try:
                if web.request(url + "/health", deadline_s=2).status == 200:
                    break
            except web.WebError:
                pass
            assert server.poll() is None, server.stderr.read()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.5)
        out = tmp_path / "build"
        tiny = str(ROOT / "tests" / "tiny_workload.py")
        proc = run_cli("build", tiny, "--profile", "host", "--quantize", "none", "-o", str(out), f"--mlflow={url}")
        assert proc.returncode == 0, proc.stderr
        report = json.loads((out / "report.json").read_text())
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=url)
        run = only_run(client)
        assert run.info.status == "FINISHED" and run.data.metrics == pytest.approx(report_metrics(report))
        assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"model.onnx", "report.json", "report.md",
                                                                             "report.html"}
        stored = client.download_artifacts(run.info.run_id, "model.onnx", str(tmp_path / "back"))
        assert open(stored, "rb").read() == (out / "model.onnx").read_bytes()
    finally:
        server.terminate()
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            server.kill()
