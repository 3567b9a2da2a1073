"""Real browser checks: headless Chromium loads the report, the index and the web app's pages."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from .browser import dump_dom, parse_page, screenshot
from .test_report import make_summary, top_rows, write_run
from .test_web import write_small_csv
from .webserver import WebServer

# Each Chromium start takes seconds, so the whole module is in the slow set.
pytestmark = pytest.mark.slow

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def server(output_dir: Path) -> Iterator[WebServer]:
    """The web app on the test's output folder."""
    web = WebServer(output_dir)
    yield web
    web.close()


def _assert_screenshot(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 20_000, f"{path.name} is {len(data)} bytes, too small for a rendered page"


def test_browser_report_visible_content(output_dir: Path, tmp_path: Path) -> None:
    from anomaly_spark.report import render_report

    run_dir = write_run(output_dir, make_summary("run-a"))
    render_report(make_summary("run-a"), top_rows(), {}, run_dir / "report.html")
    page = parse_page(dump_dom((run_dir / "report.html").as_uri()))
    assert page.text_by_id["best-model"] == "isolation_forest"
    assert page.text_by_id["anomaly-count"] == "50"
    assert page.text_by_id["rows-scored"] == "1000"
    assert "temperature (4.2)" in page.text_by_id["top-anomalies-table"]
    _assert_screenshot(screenshot((run_dir / "report.html").as_uri(), tmp_path / "report.png"))


def test_browser_static_index(output_dir: Path, tmp_path: Path) -> None:
    from anomaly_spark.report.index import write_index

    write_run(output_dir, make_summary("run-a", started_at="2026-01-01T00:00:00+00:00"))
    write_run(output_dir, make_summary("run-b", started_at="2026-01-02T00:00:00+00:00", anomalies_flagged=7))
    index = write_index(output_dir)
    page = parse_page(dump_dom(index.as_uri()))
    rows = [attributes["data-run-id"] for tag, attributes in page.tags if tag == "tr" and "data-run-id" in attributes]
    assert rows == ["run-b", "run-a"]
    assert "isolation_forest" in page.text_by_id["runs"]
    _assert_screenshot(screenshot(index.as_uri(), tmp_path / "index.png", height=900))


def test_browser_web_run_page_updates(server: WebServer, tmp_path: Path) -> None:
    write_run(server.output, make_summary("run-a", anomalies_flagged=42))
    page = parse_page(dump_dom(server.url("/runs/run-a"), budget_ms=3000))
    assert page.body.get("data-live") == "true", "app.js did not update the page"
    assert page.text_by_id["status"] == "succeeded"
    assert page.text_by_id["best-model"] == "isolation_forest"
    assert page.text_by_id["anomaly-count"] == "42"
    assert page.text_by_id["anomaly-rate"] == "5.00%"
    _assert_screenshot(screenshot(server.url("/runs/run-a"), tmp_path / "web_run.png", height=900, budget_ms=3000))


def test_browser_web_index_and_history(server: WebServer, tmp_path: Path) -> None:
    for day in (1, 2):
        write_run(server.output, make_summary(f"run-{day}", started_at=f"2026-01-0{day}T00:00:00+00:00"))
    page = parse_page(dump_dom(server.url("/")))
    assert "run-1" in page.text_by_id["runs"]
    assert page.text_by_id["new-run-link"] == "Start a run"
    history = parse_page(dump_dom(server.url("/history.html")))
    assert any(tag == "img" and attributes["src"].startswith("data:image/png") for tag, attributes in history.tags)
    _assert_screenshot(screenshot(server.url("/history.html"), tmp_path / "history.png", height=1200))
    form = parse_page(dump_dom(server.url("/runs/new")))
    assert any(tag == "input" and attributes.get("name") == "source" for tag, attributes in form.tags)


def test_browser_real_run_report_and_page(spark: Any, output_dir: Path, tmp_path: Path) -> None:
    from anomaly_spark.config import load_config
    from anomaly_spark.pipeline import run_analysis

    source = write_small_csv(tmp_path / "small.csv")
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
    model = result.summary["best_model"]["name"]
    count = str(result.summary["anomalies_flagged"])

    report = parse_page(dump_dom(result.report_path.as_uri()))
    assert report.text_by_id["best-model"] == model
    assert report.text_by_id["anomaly-count"] == count
    assert report.text_by_id["dataset"] == "small"
    path = screenshot(result.report_path.as_uri(), tmp_path / "real_report.png", height=4000)
    _assert_screenshot(path)

    web = WebServer(output_dir)
    try:
        page = parse_page(dump_dom(web.url(f"/runs/{result.run_id}"), budget_ms=3000))
        assert page.body.get("data-live") == "true"
        assert page.text_by_id["best-model"] == model
        assert page.text_by_id["anomaly-count"] == count
        served = parse_page(dump_dom(web.url(f"/runs/{result.run_id}/report.html")))
        assert served.text_by_id["best-model"] == model
    finally:
        web.close()
