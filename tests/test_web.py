"""The web app over real HTTP on 127.0.0.1: pages, guards, and runs started through the API."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlencode

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from anomaly_spark.cli import cli
from anomaly_spark.web.jobs import RunRequest, RunRequestError

from .test_report import make_summary, write_run
from .webserver import WebServer

TOKEN = "test-token-5f2c9a"


@pytest.fixture()
def server(output_dir: Path) -> Iterator[WebServer]:
    """The web app on the test's output folder, without an access token."""
    web = WebServer(output_dir)
    yield web
    web.close()


@pytest.fixture()
def guarded(output_dir: Path) -> Iterator[WebServer]:
    """The web app with an access token configured."""
    web = WebServer(output_dir, token=TOKEN)
    yield web
    web.close()


def test_web_index_lists_runs(server: WebServer) -> None:
    write_run(server.output, make_summary("run-a"))
    status, headers, body = server.request("/")
    assert status == 200
    html = body.decode()
    assert 'href="runs/run-a"' in html
    assert 'href="runs/run-a/report.html"' in html
    assert "default-src 'none'" in headers["content-security-policy"]
    assert headers["x-content-type-options"] == "nosniff"
    status, _, body = server.request("/index.html")
    assert status == 200
    assert b'href="runs/run-a"' in body


def test_web_report_and_artifacts_served(server: WebServer) -> None:
    run_dir = write_run(server.output, make_summary("run-a"))
    (run_dir / "plots").mkdir()
    (run_dir / "plots" / "score_distribution.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    status, headers, body = server.request("/runs/run-a/report.html")
    assert status == 200
    assert headers["content-type"].startswith("text/html")
    assert b'id="best-model">isolation_forest<' in body
    status, headers, body = server.request("/runs/run-a/run_summary.json")
    assert status == 200
    assert json.loads(body)["run_id"] == "run-a"
    assert server.request("/runs/run-a/plots/score_distribution.png")[1]["content-type"] == "image/png"


def test_web_run_page_and_status(server: WebServer) -> None:
    write_run(server.output, make_summary("run-a"))
    status, _, body = server.request("/runs/run-a")
    assert status == 200
    assert b'data-run-id="run-a"' in body
    assert b'id="anomaly-count">50<' in body
    status, document = server.get_json("/api/runs/run-a")
    assert status == 200
    assert document["status"] == "succeeded"
    assert document["model"] == "isolation_forest"
    assert document["anomalies"] == 50
    assert document["links"]["report"] == "/runs/run-a/report.html"
    status, listing = server.get_json("/api/runs")
    assert [run["run_id"] for run in listing["runs"]] == ["run-a"]


@pytest.mark.parametrize(
    "path",
    [
        "/runs/..%2F..%2Fetc/report.html",
        "/runs/../../etc/passwd",
        "/runs/run-a/..%2Frun_summary.json",
        "/runs/run-a/.hidden.json",
        "/runs/run-a/config.yaml",
        "/runs/run-a/other.html",
        "/runs/run-a/secrets/report.html",
        "/runs/-bad/report.html",
        "/api/runs/..%2F..",
        "/api/runs/a%20b",
        "/static/..%2Fapp.py",
        "/runs/" + "a" * 129,
    ],
)
def test_web_rejects_paths_outside_runs(server: WebServer, path: str) -> None:
    run_dir = write_run(server.output, make_summary("run-a"))
    (run_dir / ".hidden.json").write_text("{}")
    (run_dir / "config.yaml").write_text("secret: 1")
    (run_dir / "other.html").write_text("<p>other</p>")
    status, _, body = server.request(path)
    assert status == 404, (path, body[:200])


def test_web_symlink_out_of_runs_rejected(server: WebServer, tmp_path: Path) -> None:
    run_dir = write_run(server.output, make_summary("run-a"))
    outside = tmp_path / "outside.json"
    outside.write_text('{"secret": true}')
    (run_dir / "leak.json").symlink_to(outside)
    status, _, body = server.request("/runs/run-a/leak.json")
    assert status == 404
    assert b"secret" not in body


def test_web_unknown_run_is_404(server: WebServer) -> None:
    assert server.request("/runs/no-such-run")[0] == 404
    assert server.get_json("/api/runs/no-such-run")[0] == 404


def test_web_foreign_host_header_rejected(server: WebServer) -> None:
    status, _, _ = server.request("/", headers={"Host": "attacker.example"})
    assert status == 400


def test_web_history_fallback_page(server: WebServer) -> None:
    write_run(server.output, make_summary("run-a"))
    status, _, body = server.request("/history.html")
    assert status == 200
    assert b"Run history" in body
    (server.output / "history.html").write_text("<html><body>written by the history command</body></html>")
    assert b"written by the history command" in server.request("/history.html")[2]


def test_web_token_required_to_start(guarded: WebServer) -> None:
    status, document = guarded.post_json("/api/runs", {"source": "data.csv"})
    assert status == 401
    assert "ANOMALY_SPARK_WEB_TOKEN" in document["error"]
    status, document = guarded.post_json("/api/runs", {"source": "data.csv"}, token="wrong-token")
    assert status == 401
    form = urlencode({"source": "data.csv", "token": "wrong-token"}).encode()
    status, _, body = guarded.request("/runs", "POST", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 401
    assert b"invalid access token" in body
    assert not (guarded.output / "web").exists()
    status, _, body = guarded.request("/runs/new")
    assert b'name="token"' in body


def test_web_pages_readable_without_token(guarded: WebServer) -> None:
    write_run(guarded.output, make_summary("run-a"))
    assert guarded.request("/")[0] == 200
    assert guarded.get_json("/api/runs/run-a")[0] == 200


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ({"source": "x.csv", "colour": "red"}, "unknown field(s) colour"),
        ({"source": "x.csv", "format": "xml"}, "invalid format 'xml'"),
        ({"source": "x.csv", "mode": "fast"}, "invalid mode 'fast'"),
        ({"source": "x.csv", "run_id": "../escape"}, "invalid run_id '../escape'"),
        ({"source": "x.csv", "run_id": "new"}, "reserved"),
        ({"source": 5}, "field source must be text"),
        ({"source": "x.csv\n--output=/tmp"}, "control character"),
        ({"source": "x.csv", "settings": {"run.output": "/elsewhere"}}, "setting 'run.output' cannot be set"),
        ({"source": "x.csv", "settings": {"spark.conf": {"spark.driver.extraJavaOptions": "-x"}}}, "setting 'spark.conf' cannot be set"),
        ({"source": "x.csv", "settings": {"api.auth.token_file": "/etc/shadow"}}, "setting 'api.auth.token_file' cannot be set"),
        ({"source": "x.csv", "settings": {"detection.contamination": "lots"}}, "detection.contamination"),
        ({"source": "x.csv", "plots": "maybe"}, "field plots must be true or false"),
        (["x.csv"], "must be a JSON object"),
    ],
)
def test_web_invalid_run_request_400(server: WebServer, document: Any, fragment: str) -> None:
    status, answer = server.post_json("/api/runs", document)
    assert status == 400, answer
    assert fragment in answer["error"]
    assert not (server.output / "runs").exists()


def test_web_request_guards(server: WebServer) -> None:
    status, _, _ = server.request("/api/runs", "POST", b"source=x", {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415
    status, _, body = server.request("/api/runs", "POST", b"{not json", {"Content-Type": "application/json"})
    assert status == 400
    assert b"not valid JSON" in body
    big = json.dumps({"source": "x" * 70000}).encode()
    assert server.request("/api/runs", "POST", big, {"Content-Type": "application/json"})[0] == 413
    form = urlencode({"source": "x.csv"}).encode()
    headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": "http://attacker.example"}
    assert server.request("/runs", "POST", form, headers)[0] == 403


def test_web_form_error_rerenders_escaped(server: WebServer) -> None:
    form = urlencode({"source": "<b>x</b>.csv", "format": "<i>xml</i>"}).encode()
    status, _, body = server.request("/runs", "POST", form, {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400
    assert b"invalid format &#39;&lt;i&gt;xml&lt;/i&gt;&#39;" in body
    assert b'value="&lt;b&gt;x&lt;/b&gt;.csv"' in body
    assert b"<i>xml</i>" not in body


def test_run_request_command_is_argument_list(tmp_path: Path) -> None:
    request = RunRequest.from_mapping(
        {"source": "a b; rm -rf /.csv", "label_column": "--output=/etc", "settings": {"detection.contamination": 0.02, "features.exclude": ["x y"]}}
    )
    command = request.command(tmp_path, "run-1")
    assert command[1:4] == ["-m", "anomaly_spark", "run"]
    assert "--source=a b; rm -rf /.csv" in command
    assert "--label-column=--output=/etc" in command
    assert f"--output={tmp_path}" in command
    assert [item for item in command if item.startswith("--output")] == [f"--output={tmp_path}"]
    assert "--set=detection.contamination=0.02" in command
    assert '--set=features.exclude=["x y"]' in command
    with pytest.raises(RunRequestError, match="setting 'run.output'"):
        RunRequest.from_mapping({"settings": {"run.output": "/x"}})


def test_launcher_process_exit_without_summary(tmp_path: Path) -> None:
    from anomaly_spark.web.jobs import RunLauncher

    # /bin/false replaces the interpreter: a process that exits 1 before writing anything.
    launcher = RunLauncher(tmp_path, python="/bin/false")
    started = launcher.start(RunRequest.from_mapping({"source": "x.csv", "run_id": "early-exit"}))
    assert started["run_id"] == "early-exit"
    deadline = time.monotonic() + 30
    status = launcher.status("early-exit")
    while status is not None and status["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.1)
        status = launcher.status("early-exit")
    assert status is not None
    assert status["status"] == "failed"
    assert status["exit_code"] == 1
    assert "exited with code 1 before writing run_summary.json" in status["error"]
    record_path = tmp_path / "web" / "jobs" / "early-exit.json"
    record = json.loads(record_path.read_text())
    while record["exit_code"] is None and time.monotonic() < deadline:
        time.sleep(0.1)
        record = json.loads(record_path.read_text())
    assert record["exit_code"] == 1
    assert record["request"]["source"] == "x.csv"
    restarted = RunLauncher(tmp_path).status("early-exit")
    assert restarted is not None
    assert restarted["status"] == "failed"
    with pytest.raises(RunRequestError, match="already used"):
        launcher.start(RunRequest.from_mapping({"source": "x.csv", "run_id": "early-exit"}))


def test_cli_serve_refuses_public_host_without_token(tmp_path: Path) -> None:
    environment = {key: value for key, value in os.environ.items() if key != "ANOMALY_SPARK_WEB_TOKEN"}
    outcome = CliRunner(env=environment).invoke(cli, ["serve", "--output", str(tmp_path), "--host", "0.0.0.0", "--port", "0"])
    assert outcome.exit_code == 2
    assert "ANOMALY_SPARK_WEB_TOKEN" in outcome.output
    assert "0.0.0.0" in outcome.output


def write_small_csv(path: Path) -> Path:
    """Write 200 rows of two Gaussian features with 8 shifted rows and an id column."""
    rng = np.random.default_rng(7)
    frame = pd.DataFrame({"item": [f"i{n}" for n in range(200)], "x": rng.normal(size=200), "y": rng.normal(size=200)})
    frame.loc[:7, ["x", "y"]] += 7.0
    frame.to_csv(path, index=False)
    return path


@pytest.mark.slow
def test_web_api_runs_to_completion(guarded: WebServer, tmp_path: Path) -> None:
    source = write_small_csv(tmp_path / "small.csv")
    settings = {"source.id_column": "item", "detection.detectors": ["kmeans_distance", "isolation_forest"], "spark.master": "local[1]"}
    status, answer = guarded.post_json("/api/runs", {"source": str(source), "settings": settings}, token=TOKEN)
    assert status == 400
    assert "spark.master" in answer["error"]
    del settings["spark.master"]

    started = time.monotonic()
    status, good = guarded.post_json("/api/runs", {"source": str(source), "settings": settings, "run_id": "api-good"}, token=TOKEN)
    assert status == 202, good
    assert good["run_id"] == "api-good"
    assert good["status"] == "running"
    form = urlencode({"source": str(tmp_path / "absent.csv"), "run_id": "form-bad", "token": TOKEN}).encode()
    status, headers, _ = guarded.request(
        "/runs", "POST", form, {"Content-Type": "application/x-www-form-urlencoded", "Origin": guarded.url("").rstrip("/")}
    )
    assert status == 303
    assert headers["location"] == "/runs/form-bad"
    status, third = guarded.post_json("/api/runs", {"source": str(source)}, token=TOKEN)
    assert status == 429, third
    assert "api-good" in third["error"]

    finished = guarded.wait_for_run("api-good", timeout=900)
    failed = guarded.wait_for_run("form-bad", timeout=900)
    print(f"two concurrent runs finished in {time.monotonic() - started:.0f} s")

    summary = json.loads((guarded.output / "runs" / "api-good" / "run_summary.json").read_text())
    assert finished["status"] == "succeeded"
    assert finished["exit_code"] == 0
    assert finished["rows"] == 200
    assert finished["model"] == summary["best_model"]["name"]
    assert finished["anomalies"] == summary["anomalies_flagged"]
    status, _, body = guarded.request(finished["links"]["report"])
    assert status == 200
    assert f'id="anomaly-count">{summary["anomalies_flagged"]}<'.encode() in body

    assert failed["status"] == "failed"
    assert failed["exit_code"] != 0
    assert "absent.csv" in (failed["error"] or "") + "\n".join(failed.get("log_tail") or [])

    status, listing = guarded.get_json("/api/runs")
    assert {"api-good", "form-bad"} <= {run["run_id"] for run in listing["runs"]}
    index = (guarded.output / "index.html").read_text()
    assert "api-good" in index
    record = json.loads((guarded.output / "web" / "jobs" / "api-good.json").read_text())
    assert record["exit_code"] == 0
    assert TOKEN not in (guarded.output / "web" / "jobs" / "api-good.log").read_text()
