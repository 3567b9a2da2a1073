"""Fetch records from a REST JSON API: auth, pagination, retries and clear failures.

Pages are fetched on the driver with the standard library's ``urllib``; the
records then go to Spark for flattening. Every page is kept, as received,
for the raw snapshot, with secrets removed from its URL and headers.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Mapping

from ..logs import mask_secrets, register_secret

__all__ = ["ApiError", "FetchedPage", "ApiResult", "fetch_api_records", "extract_records", "resolve_path"]

logger = logging.getLogger(__name__)

_BODY_PREVIEW_CHARS = 200
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}


class ApiError(RuntimeError):
    """An API request failed; the message names the masked URL, status and the fix.

    Attributes
    ----------
    exit_code : int
        Distinct process exit code for the kind of failure.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(mask_secrets(message))
        self.exit_code = exit_code


# Exit codes of the ``run`` command per failure kind.
EXIT_HTTP_STATUS = 20
EXIT_NOT_JSON = 21
EXIT_NO_RECORDS = 22
EXIT_TIMEOUT = 23
EXIT_CONNECTION = 24
EXIT_AUTH = 25


@dataclass
class FetchedPage:
    """One HTTP response as received, with secrets removed."""

    url: str
    status: int
    headers: dict[str, str]
    fetched_at: str
    body: str
    page: int


@dataclass
class ApiResult:
    """Records and pages of one API ingest."""

    records: list[Any]
    pages: list[FetchedPage] = field(default_factory=list)
    retries: int = 0


def resolve_path(document: Any, dotted: str) -> Any:
    """Return the value at a dotted path (``data.items``); an empty path returns the document."""
    node = document
    for part in [p for p in dotted.split(".") if p]:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return None
    return node


def extract_records(document: Any, records_path: str, url: str) -> list[Any]:
    """Return the list of records of one page.

    A path that leads to an object whose values are all lists (records held
    under dynamic keys such as dates) yields those records with the key in a
    ``_key`` field.
    """
    node = resolve_path(document, records_path)
    if node is None:
        top = ", ".join(sorted(document)[:20]) if isinstance(document, dict) else type(document).__name__
        raise ApiError(
            f"records path '{records_path}' not found in the response of {url}; top-level keys: {top}. "
            "Set source.records_path (--records-path) to the dotted path of the record list.",
            EXIT_NO_RECORDS,
        )
    if isinstance(node, list):
        return node
    if isinstance(node, dict) and node and all(isinstance(value, list) for value in node.values()):
        gathered: list[Any] = []
        for key, items in node.items():
            for item in items:
                gathered.append({"_key": key, **item} if isinstance(item, dict) else {"_key": key, "value": item})
        return gathered
    if isinstance(node, dict):
        return [node]
    raise ApiError(
        f"records path '{records_path}' in the response of {url} holds a {type(node).__name__}, not a list of records; "
        "set source.records_path to the list.",
        EXIT_NO_RECORDS,
    )


def _read_secret(auth: Mapping[str, Any]) -> str | None:
    if auth.get("type", "none") == "none":
        return None
    env_name = auth.get("token_env") or ""
    file_name = auth.get("token_file") or ""
    secret: str | None = None
    if env_name:
        secret = os.environ.get(env_name)
        if not secret:
            raise ApiError(
                f"api.auth.token_env names the environment variable {env_name}, which is not set or empty; "
                "export it before the run.",
                EXIT_AUTH,
            )
    elif file_name:
        try:
            secret = Path(file_name).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiError(f"cannot read the secret file {file_name} named by api.auth.token_file: {exc.strerror}", EXIT_AUTH) from None
    else:
        raise ApiError(
            f"api.auth.type is {auth.get('type')!r} but neither api.auth.token_env nor api.auth.token_file is set; "
            "name the environment variable or file that holds the secret.",
            EXIT_AUTH,
        )
    register_secret(secret)
    return secret


def _apply_auth(url: str, headers: dict[str, str], auth: Mapping[str, Any], secret: str | None) -> str:
    kind = auth.get("type", "none")
    if secret is None or kind == "none":
        return url
    if kind == "bearer":
        headers["Authorization"] = f"Bearer {secret}"
    elif kind == "header":
        headers[auth.get("name") or "X-API-Key"] = secret
    elif kind == "query":
        return _with_params(url, {auth.get("name") or "api_key": secret})
    return url


def _with_params(url: str, params: Mapping[str, Any]) -> str:
    if not params:
        return url
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    names = set(params)
    query = [(k, v) for k, v in query if k not in names] + [(k, str(v)) for k, v in params.items()]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))


def _retry_after_seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _public_headers(headers: Mapping[str, str], auth: Mapping[str, Any]) -> dict[str, str]:
    hidden = set(_SECRET_HEADERS)
    if auth.get("type") == "header" and auth.get("name"):
        hidden.add(str(auth["name"]).lower())
    return {k: mask_secrets(v) for k, v in headers.items() if k.lower() not in hidden}


def _next_link(link_header: str | None) -> str | None:
    if not link_header:
        return None
    for part in link_header.split(","):
        match = re.search(r"<([^>]*)>\s*;(.*)", part.strip())
        if match and re.search(r'rel\s*=\s*"?([^";]*\s)?next(\s[^";]*)?"?', match.group(2)):
            return match.group(1)
    return None


class _Fetcher:
    def __init__(self, api: Mapping[str, Any]) -> None:
        self.api = api
        self.auth = api.get("auth", {})
        self.secret = _read_secret(self.auth)
        self.retries = 0

    def request(self, url: str, page: int) -> tuple[FetchedPage, Any, dict[str, str]]:
        headers = {"Accept": "application/json", "User-Agent": "anomaly-spark"}
        headers.update({str(k): str(v) for k, v in (self.api.get("headers") or {}).items()})
        full_url = _apply_auth(url, headers, self.auth, self.secret)
        method = str(self.api.get("method", "GET")).upper()
        data = None
        if method == "POST" and self.api.get("body") is not None:
            data = json.dumps(self.api["body"]).encode("utf-8")
            headers["Content-Type"] = "application/json"
        shown_url = mask_secrets(url)
        max_retries = int(self.api.get("max_retries", 4))
        backoff = float(self.api.get("backoff_initial_s", 0.5))
        backoff_max = float(self.api.get("backoff_max_s", 30))
        # urllib applies one timeout to connect and to each read; the larger of the two is used.
        timeout = max(float(self.api.get("connect_timeout_s", 10)), float(self.api.get("read_timeout_s", 30)))
        attempt = 0
        while True:
            request = urllib.request.Request(full_url, data=data, headers=headers, method=method)
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    status = int(response.status)
                    response_headers = {k: v for k, v in response.headers.items()}
                    raw = response.read()
                break
            except urllib.error.HTTPError as exc:
                status = exc.code
                response_headers = {k: v for k, v in exc.headers.items()} if exc.headers else {}
                body_text = exc.read().decode("utf-8", "replace") if exc.fp else ""
                if (status == 429 or status >= 500) and attempt < max_retries:
                    wait = _retry_after_seconds(response_headers.get("Retry-After"))
                    if wait is None:
                        wait = min(backoff * (2**attempt), backoff_max) * (0.5 + random.random() / 2)
                    attempt += 1
                    self.retries += 1
                    logger.warning("HTTP %s from %s; retry %d of %d in %.2f s", status, shown_url, attempt, max_retries, wait)
                    time.sleep(wait)
                    continue
                hint = {
                    401: "check the API token (api.auth.token_env or api.auth.token_file)",
                    403: "check the API token and its permissions",
                    404: "check the URL",
                    429: "the API rate limit was hit; raise api.max_retries or wait",
                }.get(status, "check the URL and the API's status")
                raise ApiError(
                    f"HTTP {status} from {shown_url} after {attempt} retries "
                    f"(content type {response_headers.get('Content-Type', 'unknown')}): "
                    f"{body_text[:_BODY_PREVIEW_CHARS]!r}; {hint}",
                    EXIT_AUTH if status in (401, 403) else EXIT_HTTP_STATUS,
                ) from None
            except (TimeoutError, socket.timeout):
                raise ApiError(
                    f"request to {shown_url} timed out after {timeout:g} s; raise api.read_timeout_s or check the server",
                    EXIT_TIMEOUT,
                ) from None
            except urllib.error.URLError as exc:
                if isinstance(exc.reason, (TimeoutError, socket.timeout)):
                    raise ApiError(
                        f"request to {shown_url} timed out after {timeout:g} s; raise api.read_timeout_s or check the server",
                        EXIT_TIMEOUT,
                    ) from None
                raise ApiError(f"cannot connect to {shown_url}: {exc.reason}; check the host and port", EXIT_CONNECTION) from None
        text = raw.decode("utf-8", "replace")
        content_type = response_headers.get("Content-Type", "unknown")
        try:
            document = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ApiError(
                f"response of {shown_url} (HTTP {status}, content type {content_type}) is not valid JSON "
                f"({exc.msg} at character {exc.pos}); it starts with {text[:_BODY_PREVIEW_CHARS]!r}",
                EXIT_NOT_JSON,
            ) from None
        page_record = FetchedPage(
            url=shown_url,
            status=status,
            headers=_public_headers(response_headers, self.auth),
            fetched_at=datetime.now(timezone.utc).isoformat(),
            body=mask_secrets(text),
            page=page,
        )
        return page_record, document, response_headers


def fetch_api_records(url: str, api: Mapping[str, Any], records_path: str = "") -> ApiResult:
    """Fetch every page of an API and return the records and the pages as received.

    Pagination follows ``api.pagination``: a next URL in the body, an RFC 8288
    ``Link`` header, page-number, offset or cursor parameters. It stops on an
    empty page, a missing next link or cursor, or ``api.max_pages``; page
    counts reported by the API are not trusted.

    Raises
    ------
    ApiError
        On HTTP errors after retries, timeouts, refused connections, bodies
        that are not JSON, and an ingest that yields no records.
    """
    pagination = api.get("pagination", {})
    kind = pagination.get("type", "none")
    max_pages = int(api.get("max_pages", 100))
    fetcher = _Fetcher(api)
    result = ApiResult(records=[])
    base_params = dict(api.get("params") or {})
    page_number = int(pagination.get("start_page", 1))
    offset = 0
    limit = int(pagination.get("limit", 100))
    cursor: Any = None
    next_url: str | None = _with_params(url, base_params)

    for page_index in range(max_pages):
        if next_url is None:
            break
        if kind == "page":
            current = _with_params(next_url, {pagination.get("page_param", "page"): page_number})
        elif kind == "offset":
            current = _with_params(
                next_url, {pagination.get("offset_param", "offset"): offset, pagination.get("limit_param", "limit"): limit}
            )
        elif kind == "cursor" and cursor is not None:
            current = _with_params(next_url, {pagination.get("cursor_param", "cursor"): cursor})
        else:
            current = next_url
        page, document, headers = fetcher.request(current, page_index + 1)
        result.pages.append(page)
        records = extract_records(document, records_path, page.url)
        result.records.extend(records)
        logger.info("fetched page %d from %s: %d records (%d so far)", page_index + 1, page.url, len(records), len(result.records))
        if not records:
            break
        if kind == "next_url":
            found = resolve_path(document, pagination.get("next_url_path") or "next")
            next_url = urllib.parse.urljoin(current, found) if isinstance(found, str) and found else None
        elif kind == "link_header":
            link = _next_link(headers.get("Link") or headers.get("link"))
            next_url = urllib.parse.urljoin(current, link) if link else None
        elif kind == "page":
            page_number += 1
        elif kind == "offset":
            offset += len(records)
        elif kind == "cursor":
            cursor = resolve_path(document, pagination.get("cursor_path") or "next_cursor")
            if cursor in (None, ""):
                next_url = None
        else:
            next_url = None
    else:
        logger.warning("stopped after api.max_pages=%d pages; more pages may exist", max_pages)

    result.retries = fetcher.retries
    if not result.records:
        raise ApiError(
            f"the API at {mask_secrets(url)} returned no records on {len(result.pages)} page(s); "
            "check the URL, the query parameters and source.records_path",
            EXIT_NO_RECORDS,
        )
    return result
