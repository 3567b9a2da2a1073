"""A full ingest and analysis with an API token never writes the token anywhere.

The server echoes the token back in records, a response header, a cookie and
the next-page link, as careless APIs do. Every file under the output folder
(Delta parquet files read as bytes too), every string in the Delta tables,
the run logs and the captured console output are searched for it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterator

import pytest
from pyspark.sql import functions as F

from anomaly_spark.config import load_config
from anomaly_spark.pipeline import run_analysis

from .apiserver import ApiServer, Response, json_response

pytestmark = pytest.mark.slow

KEY_NAMES = {"bearer": "", "header": "X-Api-Key", "query": "api_key"}
TOKENS = {"bearer": "brr-6d0c1e5a9f3b4e71", "header": "hdr-2a7f90c4d1e84b6a", "query": "qry-81c4e2f7a9d04c3b"}


@pytest.fixture()
def captured_log() -> Iterator[list[str]]:
    """Every message of the anomaly_spark loggers during the test, formatted."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(self.format(record))

    handler = _Collect(level=logging.DEBUG)
    logger = logging.getLogger("anomaly_spark")
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)


def _secured_feed(kind: str, token: str, features: list[dict[str, Any]], server_url: Any) -> Any:
    half = len(features) // 2

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        presented = {
            "bearer": headers.get("Authorization") == f"Bearer {token}",
            "header": headers.get("X-Api-Key") == token,
            "query": query.get("api_key") == [token],
        }[kind]
        if not presented:
            return json_response({"error": "invalid token"}, status=401)
        page = int(query.get("page", ["1"])[0])
        chunk = features[:half] if page == 1 else features[half:]
        chunk = [dict(f, properties=dict(f["properties"], echo=f"seen {token}")) for f in chunk]
        following = server_url(f"/feed?page=2&api_key={token}") if page == 1 else None
        return json_response(
            {"type": "FeatureCollection", "metadata": {"url": f"/feed?api_key={token}"}, "features": chunk, "next": following},
            headers={"X-Echo": token, "Set-Cookie": f"session={token}; HttpOnly"},
        )

    return handler


def _strings_in_delta(spark: Any, path: Path) -> list[str]:
    table = spark.read.format("delta").load(str(path))
    as_text = table.select(F.to_json(F.struct(*[F.col(f"`{c}`") for c in table.columns])).alias("row"))
    return [row["row"] for row in as_text.collect()]


@pytest.mark.parametrize("kind", ["bearer", "header", "query"])
def test_secrets_token_absent_everywhere(
    kind: str,
    spark: Any,
    api_samples_dir: Path,
    output_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    captured_log: list[str],
    capfd: pytest.CaptureFixture[str],
) -> None:
    token = TOKENS[kind]
    monkeypatch.setenv("ANOMALY_TEST_TOKEN", token)
    features = json.loads((api_samples_dir / "usgs_earthquakes_all_day_2014.json").read_text())["features"]
    server = ApiServer({})
    server.routes["/feed"] = _secured_feed(kind, token, features, server.url)
    try:
        config = load_config(
            extra={
                "run.output": str(output_dir),
                "source.path": server.url("/feed"),
                "source.records_path": "features",
                "api.pagination.type": "next_url",
                "api.auth.type": kind,
                "api.auth.token_env": "ANOMALY_TEST_TOKEN",
                "api.auth.name": KEY_NAMES[kind],
                "detection.detectors": ["kmeans_distance", "isolation_forest"],
                "run.plots": kind == "bearer",
            }
        )
        result = run_analysis(config, spark=spark)
        requests = list(server.requests)
    finally:
        server.close()

    assert result.summary["status"] == "succeeded"
    assert result.summary["rows_ingested"] == len(features)
    assert result.summary["api"]["pages"] == 2
    assert len(requests) == 2

    needle = token.encode()
    files = [p for p in output_dir.rglob("*") if p.is_file()]
    assert any(p.suffix == ".parquet" for p in files)
    assert any(p.name == "scores.csv" for p in files)
    leaking = [str(p.relative_to(output_dir)) for p in files if needle in p.read_bytes()]
    assert leaking == []

    for table in ("raw", "flat", "scores", "metrics_history"):
        rows = _strings_in_delta(spark, output_dir / "delta" / table)
        assert rows, table
        assert not [r for r in rows if token in r], table
    raw_body = _strings_in_delta(spark, output_dir / "delta" / "raw")[0]
    assert "seen ***" in raw_body

    assert captured_log
    assert not [m for m in captured_log if token in m]
    console = capfd.readouterr()
    assert token not in console.out
    assert token not in console.err

    saved = json.loads((result.run_dir / "config.json").read_text())
    assert saved["config"]["api"]["auth"]["token_env"] == "ANOMALY_TEST_TOKEN"
    assert saved["config"]["api"]["auth"]["type"] == kind
