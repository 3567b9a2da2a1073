"""The API fetcher against a real HTTP server on 127.0.0.1: pagination, auth, retries and faults.

Pages are cut from the recorded public API responses, so every record count
is computed from those files.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from anomaly_spark.config import load_config
from anomaly_spark.ingest.http import (
    EXIT_AUTH,
    EXIT_CONNECTION,
    EXIT_HTTP_STATUS,
    EXIT_NO_RECORDS,
    EXIT_NOT_JSON,
    EXIT_TIMEOUT,
    EXIT_TRUNCATED,
    ApiError,
    _next_link,
    fetch_api_records,
)

from .apiserver import ApiServer, Response, file_handler, json_response, unused_port

TOKEN = "tok-3f9a1c77e2b84d0d"


def _api(**settings: Any) -> dict[str, Any]:
    """The default api section with dotted overrides such as pagination.type=page."""
    extra = {f"api.{key}": value for key, value in settings.items()}
    return load_config(extra=extra).section("api")


def _load(api_samples_dir: Path, name: str) -> Any:
    return json.loads((api_samples_dir / name).read_text(encoding="utf-8"))


@pytest.fixture()
def fetch_log() -> Iterator[list[str]]:
    """Messages that the fetcher logs while the test runs."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.DEBUG)
    logger = logging.getLogger("anomaly_spark.ingest.http")
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(previous)


# Pagination styles


def test_fetch_offset_pages_socrata(api_samples_dir: Path) -> None:
    records = _load(api_samples_dir, "socrata_seattle_911_incidents.json")

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        offset, limit = int(query["$offset"][0]), int(query["$limit"][0])
        return json_response(records[offset : offset + limit])

    with ApiServer({"/resource/3k2p-39jp.json": handler}) as server:
        result = fetch_api_records(
            server.url("/resource/3k2p-39jp.json"),
            _api(**{"pagination.type": "offset", "pagination.offset_param": "$offset", "pagination.limit_param": "$limit", "pagination.limit": 300}),
        )
        offsets = [r["query"] for r in server.requests]
    assert len(result.records) == len(records)
    assert [r["cad_cdw_id"] for r in result.records] == [r["cad_cdw_id"] for r in records]
    # Pages of 300, 300, 300, 100, then an empty page that ends the loop.
    assert len(offsets) == len(records) // 300 + 2
    assert result.stop_reason == "empty_page"
    assert len(result.pages) == len(offsets)


def test_fetch_page_numbers_ignore_reported_totals(api_samples_dir: Path) -> None:
    page1 = _load(api_samples_dir, "inaturalist_species_counts_page1.json")
    page2 = _load(api_samples_dir, "inaturalist_species_counts_page2.json")
    empty = {**page2, "page": 3, "results": []}
    pages = {1: page1, 2: page2, 3: empty}

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        return json_response(pages[int(query["page"][0])])

    with ApiServer({"/v1/observations/species_counts": handler}) as server:
        result = fetch_api_records(
            server.url("/v1/observations/species_counts"),
            _api(**{"pagination.type": "page", "params": {"per_page": 30}}),
            "results",
        )
        queries = [r["query"] for r in server.requests]
    # per_page (30) exceeds the first page's 13 records: the loop must not stop on a short page.
    assert len(result.records) == len(page1["results"]) + len(page2["results"])
    assert len(result.records) == page1["total_results"]
    assert len(queries) == 3
    assert all("per_page=30" in q for q in queries)
    assert result.stop_reason == "empty_page"


def test_fetch_next_url_in_body(api_samples_dir: Path) -> None:
    planets = _load(api_samples_dir, "swapi_planets_page1_results_only.json")["results"]
    chunks = [planets[0:4], planets[4:8], planets[8:]]

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        page = int(query.get("page", ["1"])[0])
        # A relative link on page 1, an absolute one on page 2, none on the last page.
        following = {1: "/api/planets/?page=2", 2: server.url("/api/planets/?page=3"), 3: None}[page]
        return json_response({"count": 999, "next": following, "results": chunks[page - 1]})

    server = ApiServer({"/api/planets/": handler})
    try:
        result = fetch_api_records(server.url("/api/planets/"), _api(**{"pagination.type": "next_url"}), "results")
    finally:
        server.close()
    assert [p["name"] for p in result.records] == [p["name"] for p in planets]
    assert len(result.pages) == len(chunks)
    assert result.stop_reason == "no_next_link"


def test_fetch_link_header_pages(api_samples_dir: Path) -> None:
    coins = _load(api_samples_dir, "coingecko_coins_markets.json")
    size = 12
    chunks = [coins[i : i + size] for i in range(0, len(coins), size)]

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        page = int(query.get("page", ["1"])[0])
        links = [f'<{server.url("/coins/markets")}?page={len(chunks)}>; rel="last"']
        if page < len(chunks):
            links.append(f'<{server.url("/coins/markets")}?page={page + 1}>; rel="next"')
        return json_response(chunks[page - 1], headers={"Link": ", ".join(links)})

    server = ApiServer({"/coins/markets": handler})
    try:
        result = fetch_api_records(server.url("/coins/markets"), _api(**{"pagination.type": "link_header"}))
    finally:
        server.close()
    assert [c["id"] for c in result.records] == [c["id"] for c in coins]
    assert len(result.pages) == len(chunks)
    assert result.pages[0].headers["Link"].count("rel=") == 2


def test_fetch_cursor_pages(api_samples_dir: Path) -> None:
    quakes = _load(api_samples_dir, "socrata_earthquakes.json")
    size = 400
    cursors = {None: 0, **{f"c{start}": start for start in range(size, len(quakes), size)}}

    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        start = cursors[query["after"][0] if "after" in query else None]
        following = f"c{start + size}" if start + size < len(quakes) else None
        return json_response({"data": quakes[start : start + size], "meta": {"next_cursor": following}})

    with ApiServer({"/quakes": handler}) as server:
        result = fetch_api_records(
            server.url("/quakes"),
            _api(**{"pagination.type": "cursor", "pagination.cursor_param": "after", "pagination.cursor_path": "meta.next_cursor"}),
            "data",
        )
    assert len(result.records) == len(quakes)
    assert len(result.pages) == -(-len(quakes) // size)
    assert result.stop_reason == "no_cursor"


def test_fetch_dynamic_keys_gathered(api_samples_dir: Path) -> None:
    feed = _load(api_samples_dir, "nasa_neows_feed.json")
    with ApiServer({"/neo/rest/v1/feed": file_handler(api_samples_dir / "nasa_neows_feed.json")}) as server:
        result = fetch_api_records(server.url("/neo/rest/v1/feed"), _api(), "near_earth_objects", key_column="date")
    expected = sum(len(items) for items in feed["near_earth_objects"].values())
    assert len(result.records) == expected
    assert len(result.records) == feed["element_count"]
    dates = {r["date"] for r in result.records}
    assert dates == set(feed["near_earth_objects"])
    first_day = sorted(feed["near_earth_objects"])[0]
    assert sum(1 for r in result.records if r["date"] == first_day) == len(feed["near_earth_objects"][first_day])


def test_fetch_stops_at_max_pages(fetch_log: list[str]) -> None:
    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        return json_response([{"page": int(query["page"][0]), "value": count}])

    with ApiServer({"/endless": handler}) as server:
        result = fetch_api_records(server.url("/endless"), _api(max_pages=3, **{"pagination.type": "page"}))
        requests = len(server.requests)
    assert requests == 3
    assert len(result.records) == 3
    assert result.stop_reason == "max_pages"
    assert any("api.max_pages=3" in m for m in fetch_log)


def test_fetch_stops_when_page_parameter_ignored(fetch_log: list[str]) -> None:
    rows = [{"id": i, "x": i * 1.5} for i in range(5)]
    with ApiServer({"/same": lambda q, h, c: json_response(rows)}) as server:
        result = fetch_api_records(server.url("/same"), _api(**{"pagination.type": "page"}))
    assert len(result.records) == len(rows)
    assert result.stop_reason == "repeated_page"
    assert any("repeats the page before" in m for m in fetch_log)


def test_fetch_next_link_loop_stops() -> None:
    with ApiServer({"/loop": lambda q, h, c: json_response({"next": "/loop", "items": [{"c": c}]})}) as server:
        result = fetch_api_records(server.url("/loop"), _api(**{"pagination.type": "next_url"}), "items")
    # The body differs per request (its count), so only the seen-link check stops the loop.
    assert len(result.records) == 1
    assert result.stop_reason == "repeated_page"


def test_fetch_post_with_json_body_params_headers() -> None:
    with ApiServer({"/search": lambda q, h, c: json_response({"hits": [{"a": 1}, {"a": 2}]})}) as server:
        result = fetch_api_records(
            server.url("/search?fixed=1"),
            _api(method="POST", body={"query": {"match": "quake"}, "size": 2}, params={"lang": "en"}, headers={"X-Trace": "abc"}),
            "hits",
        )
        request = server.requests[0]
    assert len(result.records) == 2
    assert request["method"] == "POST"
    assert json.loads(request["body"]) == {"query": {"match": "quake"}, "size": 2}
    assert request["headers"]["Content-Type"] == "application/json"
    assert request["headers"]["X-Trace"] == "abc"
    assert "fixed=1" in request["query"]
    assert "lang=en" in request["query"]


def test_fetch_follows_redirect() -> None:
    routes = {
        "/old": lambda q, h, c: (301, {"Location": "/new"}, b""),
        "/new": lambda q, h, c: json_response([{"v": 1}, {"v": 2}, {"v": 3}]),
    }
    with ApiServer(routes) as server:
        result = fetch_api_records(server.url("/old"), _api())
    assert len(result.records) == 3
    assert result.pages[0].url.endswith("/new")


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ('<https://a.test/2>; rel="next"', "https://a.test/2"),
        ('<https://a.test/9>; rel="last", <https://a.test/2>; rel="next"', "https://a.test/2"),
        ("<https://a.test/2>; rel=next; title=\"b, c\"", "https://a.test/2"),
        ('<https://a.test/1>; rel="prev first", <https://a.test/3>; rel="next last"', "https://a.test/3"),
        ('<https://a.test/1>; rel="prev"', None),
        ('<https://a.test/1>; rel="nextpage"', None),
        ("", None),
    ],
)
def test_next_link_header_parsing(header: str, expected: str | None) -> None:
    assert _next_link(header) == expected


# Auth and secrets


def _require_token(kind: str) -> Any:
    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        presented = {
            "bearer": headers.get("Authorization") == f"Bearer {TOKEN}",
            "header": headers.get("X-Api-Key") == TOKEN,
            "query": query.get("api_key") == [TOKEN],
        }[kind]
        if not presented:
            return json_response({"error": "missing or invalid token"}, status=401)
        # The API echoes the token in a record, a header and the next link, as some APIs do.
        return json_response(
            {"next": None, "items": [{"id": 1, "self": f"/items/1?api_key={TOKEN}"}, {"id": 2, "note": f"key {TOKEN}"}]},
            headers={"X-Echo": TOKEN, "Set-Cookie": f"session={TOKEN}"},
        )

    return handler


@pytest.mark.parametrize("kind", ["bearer", "header", "query"])
def test_fetch_auth_from_env_masks_token(kind: str, monkeypatch: pytest.MonkeyPatch, fetch_log: list[str]) -> None:
    monkeypatch.setenv("TEST_API_TOKEN", TOKEN)
    auth = {"auth.type": kind, "auth.token_env": "TEST_API_TOKEN", "auth.name": "X-Api-Key" if kind == "header" else ""}
    with ApiServer({"/items": _require_token(kind)}) as server:
        result = fetch_api_records(server.url("/items"), _api(**auth), "items")
    assert len(result.records) == 2
    page = result.pages[0]
    stored = json.dumps([page.url, page.headers, page.body, result.records])
    assert TOKEN not in stored
    assert "***" in page.body
    assert "Set-Cookie" not in page.headers
    assert page.headers["X-Echo"] == "***"
    assert not any(TOKEN in m for m in fetch_log)


def test_fetch_auth_from_secret_file(tmp_path: Path) -> None:
    secret_file = tmp_path / "token.txt"
    secret_file.write_text(TOKEN + "\n")
    with ApiServer({"/items": _require_token("bearer")}) as server:
        result = fetch_api_records(server.url("/items"), _api(**{"auth.type": "bearer", "auth.token_file": str(secret_file)}), "items")
    assert len(result.records) == 2


def test_fetch_auth_missing_env_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TEST_API_TOKEN_UNSET", raising=False)
    with pytest.raises(ApiError) as caught:
        fetch_api_records("http://127.0.0.1:9/x", _api(**{"auth.type": "bearer", "auth.token_env": "TEST_API_TOKEN_UNSET"}))
    assert caught.value.exit_code == EXIT_AUTH
    assert "TEST_API_TOKEN_UNSET" in str(caught.value)


def test_fetch_rejects_secret_in_config_headers() -> None:
    with pytest.raises(ApiError) as caught:
        fetch_api_records("http://127.0.0.1:9/x", _api(headers={"Authorization": "Bearer abcdef"}))
    assert caught.value.exit_code == EXIT_AUTH
    assert "api.auth.token_env" in str(caught.value)
    assert "abcdef" not in str(caught.value)


def test_fetch_redirect_to_other_host_drops_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEST_API_TOKEN", TOKEN)
    with ApiServer({"/data": lambda q, h, c: json_response([{"auth": h.get("Authorization", "none")}])}) as other:
        # 127.0.0.1 and localhost are different origins for the credential check.
        target = other.url("/data").replace("127.0.0.1", "localhost")
        with ApiServer({"/start": lambda q, h, c: (302, {"Location": target}, b"")}) as server:
            result = fetch_api_records(server.url("/start"), _api(**{"auth.type": "bearer", "auth.token_env": "TEST_API_TOKEN"}))
            assert server.requests[0]["headers"].get("Authorization") == f"Bearer {TOKEN}"
    assert result.records == [{"auth": "none"}]


# Retries


def test_fetch_retries_503_then_succeeds(fetch_log: list[str]) -> None:
    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        if count == 1:
            return 503, {"Content-Type": "text/html"}, b"<html>maintenance</html>"
        return json_response([{"x": 1.0}, {"x": 2.0}])

    with ApiServer({"/flaky": handler}) as server:
        result = fetch_api_records(server.url("/flaky"), _api(backoff_initial_s=0.05, backoff_max_s=0.2))
        attempts = len(server.requests)
    assert attempts == 2
    assert result.retries == 1
    assert len(result.records) == 2
    retry_lines = [m for m in fetch_log if "retry 1 of 4" in m]
    assert len(retry_lines) == 1
    assert "HTTP 503" in retry_lines[0]


def test_fetch_429_honours_retry_after(fetch_log: list[str]) -> None:
    def handler(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
        if count == 1:
            return json_response({"error": "slow down"}, status=429, headers={"Retry-After": "1"})
        return json_response([{"x": 1.0}])

    with ApiServer({"/limited": handler}) as server:
        result = fetch_api_records(server.url("/limited"), _api(backoff_initial_s=0.01))
        times = [r["time"] for r in server.requests]
    assert result.retries == 1
    assert len(times) == 2
    assert times[1] - times[0] >= 1.0
    assert times[1] - times[0] < 3.0
    assert any("HTTP 429" in m and "in 1.00 s (Retry-After)" in m for m in fetch_log)


def test_fetch_retry_after_beyond_limit_fails_fast() -> None:
    with ApiServer({"/limited": lambda q, h, c: json_response({}, status=429, headers={"Retry-After": "3600"})}) as server:
        started = time.monotonic()
        with pytest.raises(ApiError) as caught:
            fetch_api_records(server.url("/limited"), _api(backoff_max_s=5))
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert caught.value.exit_code == EXIT_HTTP_STATUS
    assert "3600" in str(caught.value)
    assert "api.backoff_max_s" in str(caught.value)


def test_fetch_503_exhausts_retries() -> None:
    with ApiServer({"/down": lambda q, h, c: (503, {"Content-Type": "text/plain"}, b"upstream unavailable")}) as server:
        with pytest.raises(ApiError) as caught:
            fetch_api_records(server.url("/down"), _api(max_retries=2, backoff_initial_s=0.01, backoff_max_s=0.02))
        attempts = len(server.requests)
    assert attempts == 3
    assert caught.value.exit_code == EXIT_HTTP_STATUS
    message = str(caught.value)
    assert "HTTP 503" in message
    assert "after 2 retries" in message
    assert "upstream unavailable" in message
    assert "text/plain" in message


# Faults


def _slow(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
    time.sleep(1.5)
    return json_response([{"x": 1}])


FAULT_ROUTES: dict[str, Any] = {
    "/slow": _slow,
    "/html": lambda q, h, c: (200, {"Content-Type": "text/html; charset=utf-8"}, b"<!DOCTYPE html><html><body>Down for maintenance</body></html>"),
    "/truncated": lambda q, h, c: (200, {"Content-Type": "application/json"}, b'[{"id": 1, "mag": 2.5}, {"id": 2, "ma'),
    "/cut": lambda q, h, c: (200, {"Content-Type": "application/json", "Content-Length": "5000"}, b'[{"id": 1, "mag": 2.5}'),
    "/empty": lambda q, h, c: json_response([]),
    "/secured": lambda q, h, c: json_response({"message": "Unauthorized: token required"}, status=401),
    "/missing": lambda q, h, c: json_response({"message": "no such dataset"}, status=404),
}

# (path, exit code, fragments the message must contain)
FAULT_CASES = [
    ("/slow", EXIT_TIMEOUT, ["timed out (read, after 0.3 s)", "api.read_timeout_s", "/slow"]),
    ("/html", EXIT_NOT_JSON, ["not valid JSON", "HTTP 200", "text/html", "<!DOCTYPE html>"]),
    ("/truncated", EXIT_TRUNCATED, ["truncated JSON", "application/json", '[{"id": 1']),
    ("/cut", EXIT_TRUNCATED, ["ended after", "before the length the server announced"]),
    ("/empty", EXIT_NO_RECORDS, ["no records on 1 page(s)", "'[]'", "source.records_path"]),
    ("/secured", EXIT_AUTH, ["HTTP 401", "application/json", "token required", "api.auth.token_env"]),
    ("/missing", EXIT_HTTP_STATUS, ["HTTP 404", "no such dataset", "check the URL"]),
]


@pytest.fixture(scope="module")
def fault_server() -> Iterator[ApiServer]:
    server = ApiServer(dict(FAULT_ROUTES))
    yield server
    server.close()


@pytest.mark.parametrize(("path", "exit_code", "fragments"), FAULT_CASES, ids=[c[0].strip("/") for c in FAULT_CASES])
def test_fetch_fault_message_and_exit_code(fault_server: ApiServer, path: str, exit_code: int, fragments: list[str]) -> None:
    started = time.monotonic()
    with pytest.raises(ApiError) as caught:
        fetch_api_records(fault_server.url(path), _api(read_timeout_s=0.3, connect_timeout_s=5, max_retries=0))
    assert time.monotonic() - started < 5
    assert caught.value.exit_code == exit_code
    for fragment in fragments:
        assert fragment in str(caught.value)
    assert fault_server.url(path) in str(caught.value)


def test_fetch_connection_refused() -> None:
    port = unused_port()
    with pytest.raises(ApiError) as caught:
        fetch_api_records(f"http://127.0.0.1:{port}/data", _api(connect_timeout_s=2))
    assert caught.value.exit_code == EXIT_CONNECTION
    assert f"127.0.0.1:{port}/data" in str(caught.value)
    assert "refused" in str(caught.value).lower()


def test_fetch_exit_codes_distinct() -> None:
    codes = [EXIT_HTTP_STATUS, EXIT_NOT_JSON, EXIT_NO_RECORDS, EXIT_TIMEOUT, EXIT_CONNECTION, EXIT_AUTH, EXIT_TRUNCATED]
    assert len(set(codes)) == len(codes)


def test_fetch_records_path_missing_names_keys(api_samples_dir: Path) -> None:
    document = _load(api_samples_dir, "openweather_onecall_seattle.json")
    with ApiServer({"/onecall": file_handler(api_samples_dir / "openweather_onecall_seattle.json")}) as server:
        with pytest.raises(ApiError) as caught:
            fetch_api_records(server.url("/onecall"), _api(), "hourlly")
    assert caught.value.exit_code == EXIT_NO_RECORDS
    for key in ("hourly", "daily", "current"):
        assert key in document
        assert key in str(caught.value)


def test_fetch_records_path_nested(api_samples_dir: Path) -> None:
    document = _load(api_samples_dir, "openweather_onecall_seattle.json")
    with ApiServer({"/onecall": file_handler(api_samples_dir / "openweather_onecall_seattle.json")}) as server:
        hourly = fetch_api_records(server.url("/onecall"), _api(), "hourly")
        current = fetch_api_records(server.url("/onecall"), _api(), "current")
    assert len(hourly.records) == len(document["hourly"])
    # A path that leads to one object yields that object as the only record.
    assert current.records == [copy.deepcopy(document["current"])]


# Source profiles in conf/sources, ingested into Delta through the loopback server

PROFILES = Path(__file__).resolve().parents[1] / "conf" / "sources"


def _profile_routes(name: str, samples: Path) -> tuple[str, dict[str, Any], int]:
    """Return the path to request, the routes that serve the samples in the profile's paging style, and the expected rows."""
    if name == "usgs_geojson":
        document = _load(samples, "usgs_earthquakes_all_day_2014.json")
        return "/feed", {"/feed": file_handler(samples / "usgs_earthquakes_all_day_2014.json")}, len(document["features"])
    if name == "socrata":
        records = _load(samples, "socrata_seattle_911_incidents.json")

        def socrata(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
            offset, limit = int(query["$offset"][0]), int(query["$limit"][0])
            return json_response(records[offset : offset + limit])

        return "/resource/3k2p-39jp.json", {"/resource/3k2p-39jp.json": socrata}, len(records)
    if name == "coingecko":
        coins = _load(samples, "coingecko_coins_markets.json")

        def coingecko(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
            assert query["vs_currency"] == ["usd"]
            return json_response(coins if query["page"] == ["1"] else [])

        return "/api/v3/coins/markets", {"/api/v3/coins/markets": coingecko}, len(coins)
    if name == "openweather_onecall":
        document = _load(samples, "openweather_onecall_seattle.json")

        def onecall(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
            if query.get("appid") != [TOKEN]:
                return json_response({"cod": 401, "message": "Invalid API key"}, status=401)
            return json_response(document)

        return "/data/2.5/onecall", {"/data/2.5/onecall": onecall}, sum(max(1, len(h.get("weather") or [])) for h in document["hourly"])
    if name == "nasa_neows":
        feed = _load(samples, "nasa_neows_feed.json")

        def neows(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
            if query.get("api_key") != [TOKEN]:
                return json_response({"error": {"code": "API_KEY_INVALID"}}, status=403)
            return json_response(feed)

        expected = sum(max(1, len(o["close_approach_data"])) for items in feed["near_earth_objects"].values() for o in items)
        return "/neo/rest/v1/feed", {"/neo/rest/v1/feed": neows}, expected
    if name == "inaturalist":
        page1 = _load(samples, "inaturalist_species_counts_page1.json")
        page2 = _load(samples, "inaturalist_species_counts_page2.json")
        pages = {"1": page1, "2": page2}

        def species(query: dict[str, list[str]], headers: dict[str, str], count: int) -> Response:
            return json_response(pages.get(query["page"][0], {**page2, "results": []}))

        return "/v1/observations/species_counts", {"/v1/observations/species_counts": species}, len(page1["results"]) + len(page2["results"])
    if name == "swapi":
        document = _load(samples, "swapi_planets_page1_results_only.json")
        return "/api/planets/", {"/api/planets/": file_handler(samples / "swapi_planets_page1_results_only.json")}, len(document["results"])
    raise AssertionError(f"no routes for profile {name}")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["usgs_geojson", "socrata", "coingecko", "openweather_onecall", "nasa_neows", "inaturalist", "swapi"]
)
def test_profile_ingests_sample(
    name: str, spark: Any, api_samples_dir: Path, output_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from anomaly_spark.ingest import ingest_source

    monkeypatch.setenv("OPENWEATHER_API_KEY", TOKEN)
    monkeypatch.setenv("NASA_API_KEY", TOKEN)
    path, routes, expected_rows = _profile_routes(name, api_samples_dir)
    with ApiServer(routes) as server:
        config = load_config(PROFILES / f"{name}.yaml", extra={"source.path": server.url(path), "run.output": str(output_dir)})
        result = ingest_source(spark, config, f"profile-{name}", output_dir)
    assert result.source_format == "api"
    assert result.rows == expected_rows
    assert result.flat.count() == expected_rows
    assert len(result.column_mapping) == len(result.flat.columns) - 1
    id_column = config.get("source.id_column")
    if id_column:
        assert id_column in result.flat.columns
        assert result.flat.select(id_column).distinct().count() == expected_rows
    raw = spark.read.format("delta").load(str(output_dir / "delta" / "raw")).filter(f"run_id = 'profile-{name}'")
    assert raw.count() == result.pages
    assert TOKEN not in json.dumps([row.asDict() for row in raw.select("url", "headers", "body").collect()])


# Faults through the CLI, next to an earlier successful run that must stay intact

CLI_SETTINGS = [
    "--master", "local[2]",
    "--set", "spark.conf.spark.sql.shuffle.partitions=2",
    "--set", "detection.detectors=[kmeans_distance]",
    "--no-plots",
]


def _folder_digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _history_rows(spark: Any, output: Path) -> list[tuple[Any, ...]]:
    table = spark.read.format("delta").load(str(output / "delta" / "metrics_history"))
    return sorted(tuple(str(v) for v in row) for row in table.select("run_id", "model", "metric", "value", "status").collect())


@pytest.fixture(scope="module")
def earlier_run(spark: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One successful API run through the CLI, and the state the fault runs must leave intact."""
    from click.testing import CliRunner

    from anomaly_spark.cli import cli

    from .conftest import API_SAMPLES, require_shared

    samples = require_shared(API_SAMPLES)
    output = tmp_path_factory.mktemp("faults") / "output"
    with ApiServer({"/feed": file_handler(samples / "usgs_earthquakes_all_day_2014.json")}) as server:
        outcome = CliRunner().invoke(
            cli,
            ["run", "--config", str(PROFILES / "usgs_geojson.yaml"), "--source", server.url("/feed"),
             "--output", str(output), "--run-id", "earlier", *CLI_SETTINGS],
        )
    assert outcome.exit_code == 0, outcome.output
    return {
        "output": output,
        "digest": _folder_digest(output / "runs" / "earlier"),
        "history": _history_rows(spark, output),
        "flat_rows": spark.read.format("delta").load(str(output / "delta" / "flat")).filter("run_id = 'earlier'").count(),
    }


CLI_FAULTS = FAULT_CASES + [("refused", EXIT_CONNECTION, ["cannot connect to", "refused"])]


@pytest.mark.slow
@pytest.mark.parametrize(("path", "exit_code", "fragments"), CLI_FAULTS, ids=[c[0].strip("/") for c in CLI_FAULTS])
def test_cli_fault_exit_code_and_earlier_run_intact(
    spark: Any, fault_server: ApiServer, earlier_run: dict[str, Any], path: str, exit_code: int, fragments: list[str]
) -> None:
    from click.testing import CliRunner

    from anomaly_spark.cli import cli

    output: Path = earlier_run["output"]
    url = f"http://127.0.0.1:{unused_port()}/data" if path == "refused" else fault_server.url(path)
    run_id = f"fault-{path.strip('/')}"
    outcome = CliRunner().invoke(
        cli,
        ["run", "--source", url, "--output", str(output), "--run-id", run_id,
         "--set", "api.read_timeout_s=0.3", "--set", "api.max_retries=0", *CLI_SETTINGS],
    )
    assert outcome.exit_code == exit_code, outcome.output
    for fragment in fragments:
        assert fragment in outcome.output
    summary = json.loads((output / "runs" / run_id / "run_summary.json").read_text())
    assert summary["status"] == "failed"
    assert summary["error"]["type"] == "ApiError"

    assert _folder_digest(output / "runs" / "earlier") == earlier_run["digest"]
    history = _history_rows(spark, output)
    assert [row for row in history if row[0] == "earlier"] == [row for row in earlier_run["history"] if row[0] == "earlier"]
    assert not [row for row in history if row[0] == run_id and row[4] == "succeeded"]
    flat = spark.read.format("delta").load(str(output / "delta" / "flat"))
    assert flat.filter("run_id = 'earlier'").count() == earlier_run["flat_rows"]
    assert flat.filter(f"run_id = '{run_id}'").count() == 0
