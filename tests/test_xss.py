"""Values and keys carrying HTML and script tags show as text in every page, and no script runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import pytest

from anomaly_spark.report import render_report
from anomaly_spark.report.index import render_history, write_index

from .browser import dump_dom, parse_page
from .test_report import make_summary
from .webserver import WebServer

pytestmark = pytest.mark.slow

# Each payload marks <body> with data-xss if it ever runs as markup or script.
SCRIPT = "<script>document.body.setAttribute('data-xss','script')</script>"
IMAGE = "<img src=x onerror=\"document.body.setAttribute('data-xss','img')\">"
SVG = "<svg onload=\"document.body.setAttribute('data-xss','svg')\">"
QUOTE_BREAK = "\"><script>document.body.setAttribute('data-xss','attribute')</script>"
PAYLOADS = (SCRIPT, IMAGE, SVG, QUOTE_BREAK)
RAW_FRAGMENTS = ("<script>document", "<img src=x", "<svg onload", "'data-xss'")
# Without commas and quotes, so that a CSV header keeps it whole under any quoting convention.
IMAGE_PLAIN = "<img src=x onerror=document.body.dataset.xss=1>"


def hostile_summary(run_id: str) -> dict[str, Any]:
    """A run summary whose every free-text value and key is an HTML or script payload."""
    summary = make_summary(
        run_id,
        dataset_key=SCRIPT,
        source=IMAGE,
        warnings=[SVG, QUOTE_BREAK],
        trust=SCRIPT,
        replay_command=f"anomaly-spark replay {IMAGE}",
        selection_rule=SVG,
        timings_s={SCRIPT: 1.0},
        retrain={"recommended": True, "reasons": [IMAGE]},
    )
    summary["features"] = {
        "selected": [SCRIPT, "pressure"],
        "excluded": {IMAGE: SVG},
        "missing_cells": {SCRIPT: 3},
        "unparseable_values": {QUOTE_BREAK: 2},
    }
    summary["models"][0].update(name=SVG, params={IMAGE: SCRIPT})
    summary["models"][1]["null_reasons"] = {"silhouette": QUOTE_BREAK}
    summary["best_model"].update(name=SVG, rationale=IMAGE, params={SCRIPT: IMAGE})
    return summary


def hostile_top_rows() -> list[dict[str, Any]]:
    return [{IMAGE: SCRIPT, SCRIPT: 1.5, "pressure": 2.0, "anomaly_score": 0.9, "is_anomaly": 1, "model": SVG, "top_features": [{"feature": SVG, "contribution": 2.0}]}]


def write_hostile_run(output: Path, run_id: str = "run-xss") -> Path:
    """Write a run folder whose summary, JSON files and report carry the payloads."""
    run_dir = output / "runs" / run_id
    run_dir.mkdir(parents=True)
    summary = hostile_summary(run_id)
    summary["error"] = {"type": "ValueError", "message": SVG}
    (run_dir / "run_summary.json").write_text(json.dumps(summary))
    (run_dir / "validation.json").write_text(json.dumps({"rules": [{"rule": SCRIPT, "verdict": IMAGE}]}))
    (run_dir / "schema.json").write_text(json.dumps({"columns": {IMAGE: {"type": SVG}}}))
    (run_dir / "drift.json").write_text(json.dumps({"verdict": SCRIPT, "features": [{QUOTE_BREAK: IMAGE}]}))
    (run_dir / "columns.json").write_text(json.dumps({SCRIPT: "script_col", IMAGE: "img_col"}))
    render_report(summary, hostile_top_rows(), {}, run_dir / "report.html")
    return run_dir


def assert_no_raw_payload(html: str, where: str) -> None:
    for fragment in RAW_FRAGMENTS:
        assert fragment not in html, f"{where} contains the unescaped fragment {fragment!r}"


def assert_inert_in_browser(url: str, expected_title: str, budget_ms: int | None = None) -> Any:
    """Load ``url`` in Chromium and check that no payload ran; return the parsed page."""
    page = parse_page(dump_dom(url, budget_ms=budget_ms))
    assert "data-xss" not in page.body, f"a payload ran on {url}: {page.body}"
    assert page.title == expected_title
    injected = [(tag, attributes) for tag, attributes in page.tags if tag == "svg" or (tag == "img" and attributes.get("src") == "x")]
    assert injected == [], f"{url} holds injected elements {injected}"
    return page


@pytest.fixture()
def server(output_dir: Path) -> Iterator[WebServer]:
    """The web app on the test's output folder."""
    web = WebServer(output_dir)
    yield web
    web.close()


def test_xss_report_escapes_every_value(output_dir: Path) -> None:
    run_dir = write_hostile_run(output_dir)
    html = (run_dir / "report.html").read_text()
    assert_no_raw_payload(html, "report.html")
    assert "&lt;script&gt;document.body.setAttribute(&#39;data-xss&#39;,&#39;script&#39;)&lt;/script&gt;" in html
    page = assert_inert_in_browser((run_dir / "report.html").as_uri(), "anomaly-spark run run-xss")
    assert page.text_by_id["dataset"] == SCRIPT
    assert page.text_by_id["source"].startswith(IMAGE)
    assert page.text_by_id["best-model"] == SVG
    assert SCRIPT in page.text_by_id["renamed-columns"]
    assert IMAGE in page.text_by_id["top-anomalies-table"]
    assert SVG in page.text_by_id["top-anomalies-table"]


def test_xss_index_and_history_escape(output_dir: Path) -> None:
    write_hostile_run(output_dir)
    index = write_index(output_dir)
    assert_no_raw_payload(index.read_text(), "index.html")
    page = assert_inert_in_browser(index.as_uri(), "anomaly-spark runs")
    assert SCRIPT in page.text_by_id["runs"]
    history = output_dir / "history.html"
    history.write_text(render_history(output_dir))
    assert_no_raw_payload(history.read_text(), "history.html")
    assert_inert_in_browser(history.as_uri(), "anomaly-spark history")


def test_xss_web_pages_escape(server: WebServer) -> None:
    write_hostile_run(server.output)
    for path, title in (("/", "anomaly-spark runs"), ("/history.html", "anomaly-spark history"), ("/runs/run-xss/report.html", "anomaly-spark run run-xss")):
        status, _, body = server.request(path)
        assert status == 200
        assert_no_raw_payload(body.decode(), path)
        assert_inert_in_browser(server.url(path), title)
    page = assert_inert_in_browser(server.url("/runs/run-xss"), "anomaly-spark run run-xss", budget_ms=3000)
    assert page.body.get("data-live") == "true"
    assert page.text_by_id["error"].endswith(SVG)
    assert page.text_by_id["best-model"] == SVG
    status, headers, body = server.request("/api/runs/run-xss")
    assert headers["content-type"] == "application/json"
    assert json.loads(body)["dataset"] == SCRIPT


def test_xss_ingested_keys_and_values(spark: Any, output_dir: Path, tmp_path: Path) -> None:
    from anomaly_spark.config import load_config
    from anomaly_spark.pipeline import run_analysis

    rng = np.random.default_rng(3)
    frame = pd.DataFrame(
        {
            "item": [IMAGE_PLAIN if n % 2 else SCRIPT + str(n) for n in range(120)],
            SCRIPT: rng.normal(size=120),
            "pressure": rng.normal(size=120),
            IMAGE_PLAIN: [SVG] * 120,
        }
    )
    frame.loc[:5, [SCRIPT, "pressure"]] += 9.0
    source = tmp_path / "hostile.csv"
    frame.to_csv(source, index=False)
    result = run_analysis(
        load_config(
            extra={
                "run.output": str(output_dir),
                "source.path": str(source),
                "source.id_column": "item",
                "detection.detectors": ["kmeans_distance", "isolation_forest", "robust_covariance"],
            }
        ), spark=spark
    )
    html = result.report_path.read_text()
    assert_no_raw_payload(html, "report.html")
    page = assert_inert_in_browser(result.report_path.as_uri(), f"anomaly-spark run {result.run_id}")
    assert SCRIPT in page.text_by_id["renamed-columns"]
    assert IMAGE_PLAIN in page.text_by_id["renamed-columns"]
    top = page.text_by_id["top-anomalies-table"]
    assert SCRIPT in top or IMAGE_PLAIN in top
    index = output_dir / "index.html"
    assert_no_raw_payload(index.read_text(), "index.html")
    assert_inert_in_browser(index.as_uri(), "anomaly-spark runs")
