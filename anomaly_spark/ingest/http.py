"""Fetch records from a REST JSON API: auth, pagination, retries and clear failures.

Pages are fetched on the driver with the standard library's ``http.client``,
because it lets the connect timeout and the read timeout differ. The records
then go to Spark for flattening. Every page is kept, as received, for the raw
snapshot, with secrets removed from its URL, headers and body.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import random
import re
import socket
import ssl
import time
import urllib.parse
from dataclasses import dataclass, field
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, Mapping

from ..logs import mask_secrets, register_secret

__all__ = [
    "ApiError",
    "FetchedPage",
    "ApiResult",
    "fetch_api_records",
    "extract_records",
    "resolve_path",
    "check_no_inline_secrets",
    "EXIT_HTTP_STATUS",
    "EXIT_NOT_JSON",
    "EXIT_NO_RECORDS",
    "EXIT_TIMEOUT",
    "EXIT_CONNECTION",
    "EXIT_AUTH",
    "EXIT_TRUNCATED",
]

logger = logging.getLogger(__name__)

_BODY_PREVIEW_CHARS = 200
_MAX_REDIRECTS = 5
_SECRET_HEADERS = {"authorization", "proxy-authorization", "cookie", "set-cookie", "x-api-key"}

# Exit codes of the ``run`` command per failure kind.
EXIT_HTTP_STATUS = 20
EXIT_NOT_JSON = 21
EXIT_NO_RECORDS = 22
EXIT_TIMEOUT = 23
EXIT_CONNECTION = 24
EXIT_AUTH = 25
EXIT_TRUNCATED = 26


class ApiError(RuntimeError):
    """An API request failed; the message names the masked URL, status and the fix.

    Attributes
    ----------
    exit_code : int
        Distinct process exit code for the kind of failure: 20 HTTP error
        status, 21 body not JSON, 22 no records, 23 timeout, 24 connection
        failed, 25 authentication, 26 truncated JSON body.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(mask_secrets(message))
        self.exit_code = exit_code


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
    """Records and pages of one API ingest.

    Attributes
    ----------
    stop_reason : str
        Why pagination stopped: ``single_request``, ``empty_page``,
        ``no_next_link``, ``no_cursor``, ``repeated_page`` or ``max_pages``.
    """

    records: list[Any]
    pages: list[FetchedPage] = field(default_factory=list)
    retries: int = 0
    stop_reason: str = "single_request"


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


def extract_records(document: Any, records_path: str, url: str, key_column: str = "_key") -> list[Any]:
    """Return the list of records of one page.

    A path that leads to an object whose values are all lists (records held
    under dynamic keys such as dates) yields those records with the key in
    the ``key_column`` field. A path that leads to a single object yields
    that object as one record.

    Raises
    ------
    ApiError
        When the path is missing or leads to a scalar.
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
                gathered.append({key_column: key, **item} if isinstance(item, dict) else {key_column: key, "value": item})
        return gathered
    if isinstance(node, dict):
        return [node] if node else []
    raise ApiError(
        f"records path '{records_path}' in the response of {url} is a {type(node).__name__}, not a list of records; "
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
            secret = Path(file_name).expanduser().read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ApiError(f"cannot read the secret file {file_name} named by api.auth.token_file: {exc.strerror}", EXIT_AUTH) from None
        if not secret:
            raise ApiError(f"the secret file {file_name} named by api.auth.token_file is empty", EXIT_AUTH)
    else:
        raise ApiError(
            f"api.auth.type is {auth.get('type')!r} but neither api.auth.token_env nor api.auth.token_file is set; "
            "name the environment variable or file that holds the secret.",
            EXIT_AUTH,
        )
    if len(secret) < 4:
        # mask_secrets ignores values this short, so such a token could not be kept out of logs.
        raise ApiError(f"the API token from {env_name or file_name} is shorter than 4 characters; check its value", EXIT_AUTH)
    register_secret(secret)
    # Bodies may carry the secret JSON-escaped ("a\/b") or percent-encoded in URLs.
    register_secret(json.dumps(secret)[1:-1])
    register_secret(urllib.parse.quote(secret, safe=""))
    register_secret(urllib.parse.quote_plus(secret))
    return secret


def check_no_inline_secrets(api: Mapping[str, Any]) -> None:
    """Raise ApiError when ``api.headers`` or ``api.params`` sets a header or parameter that carries a secret."""
    auth = api.get("auth") or {}
    secret_names = set(_SECRET_HEADERS)
    if auth.get("name"):
        secret_names.add(str(auth["name"]).lower())
    for section in ("headers", "params"):
        for key in api.get(section) or {}:
            if str(key).lower() in secret_names:
                raise ApiError(
                    f"api.{section} sets {key!r}, which carries a secret; the config is saved with every run, "
                    "so name the secret's environment variable in api.auth.token_env (or its file in "
                    "api.auth.token_file) with api.auth.type bearer, header or query instead",
                    EXIT_AUTH,
                )


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
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max((when - datetime.now(timezone.utc)).total_seconds(), 0.0)


def _public_headers(headers: Mapping[str, str], auth: Mapping[str, Any]) -> dict[str, str]:
    hidden = set(_SECRET_HEADERS)
    if auth.get("type") == "header" and auth.get("name"):
        hidden.add(str(auth["name"]).lower())
    return {k: mask_secrets(v) for k, v in headers.items() if k.lower() not in hidden}


def _next_link(link_header: str | None) -> str | None:
    """Return the target of the ``rel="next"`` link of an RFC 8288 ``Link`` header."""
    if not link_header:
        return None
    for match in re.finditer(r"<([^>]*)>((?:\s*;\s*[^;,<]+(?:=\s*(?:\"[^\"]*\"|[^;,]*))?)*)", link_header):
        for param in re.finditer(r';\s*rel\s*=\s*(?:"([^"]*)"|([^;,\s]+))', match.group(2), re.I):
            relations = (param.group(1) or param.group(2) or "").lower().split()
            if "next" in relations:
                return match.group(1)
    return None


def _preview(text: str) -> str:
    return repr(text[:_BODY_PREVIEW_CHARS] + ("..." if len(text) > _BODY_PREVIEW_CHARS else ""))


def _mask_document(node: Any) -> Any:
    """Return a copy of a parsed JSON document with secrets masked in every key and string."""
    if isinstance(node, dict):
        return {mask_secrets(str(k)): _mask_document(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_mask_document(v) for v in node]
    if isinstance(node, str):
        return mask_secrets(node)
    return node


class _Timeout(Exception):
    """A connect or read timeout; ``args[0]`` is the phase."""


@dataclass
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes


class _Fetcher:
    """Request sender with auth, redirects and retries; it keeps the secret in memory for the fetch only."""

    def __init__(self, api: Mapping[str, Any]) -> None:
        self.api = api
        self.auth = api.get("auth") or {}
        check_no_inline_secrets(api)
        self.secret = _read_secret(self.auth)
        self.retries = 0
        self.connect_timeout = float(api.get("connect_timeout_s", 10))
        self.read_timeout = float(api.get("read_timeout_s", 30))

    def _send(self, method: str, url: str, headers: Mapping[str, str], data: bytes | None) -> _Response:
        """Send one request; connect and read use their own timeouts."""
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ApiError(f"invalid API URL {mask_secrets(url)!r}: use an http:// or https:// URL with a host", EXIT_CONNECTION)
        connection: http.client.HTTPConnection
        if parts.scheme == "https":
            connection = http.client.HTTPSConnection(
                parts.hostname, parts.port, timeout=self.connect_timeout, context=ssl.create_default_context()
            )
        else:
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self.connect_timeout)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        try:
            try:
                connection.connect()
            except (TimeoutError, socket.timeout):
                raise _Timeout("connect") from None
            assert connection.sock is not None
            # NOTE: the read timeout bounds each socket read, not the whole body. A server that
            # keeps sending a few bytes at a time is not cut off.
            connection.sock.settimeout(self.read_timeout)
            try:
                connection.request(method, target, body=data, headers=dict(headers))
                response = connection.getresponse()
                merged: dict[str, str] = {}
                for key, value in response.getheaders():
                    merged[key] = f"{merged[key]}, {value}" if key in merged else value
                body = response.read()
            except (TimeoutError, socket.timeout):
                raise _Timeout("read") from None
            return _Response(response.status, merged, body)
        finally:
            connection.close()

    def request(self, url: str, page: int) -> tuple[FetchedPage, Any, dict[str, str]]:
        """Fetch ``url`` (without the secret) and return the masked page, the parsed document and the headers.

        The document is returned unmasked so that next links and cursors can be followed;
        records taken from it must go through ``_mask_document``.
        """
        method = str(self.api.get("method", "GET")).upper()
        data = None
        base_headers = {"Accept": "application/json", "User-Agent": "anomaly-spark"}
        base_headers.update({str(k): str(v) for k, v in (self.api.get("headers") or {}).items()})
        if method == "POST" and self.api.get("body") is not None:
            data = json.dumps(self.api["body"]).encode("utf-8")
            base_headers["Content-Type"] = "application/json"
        shown_url = mask_secrets(url)
        max_retries = int(self.api.get("max_retries", 4))
        backoff = float(self.api.get("backoff_initial_s", 0.5))
        backoff_max = float(self.api.get("backoff_max_s", 30))
        origin = urllib.parse.urlsplit(url).netloc
        attempt = 0
        redirects = 0
        current = url
        while True:
            headers = dict(base_headers)
            same_origin = urllib.parse.urlsplit(current).netloc == origin
            # Credentials go to the configured host only, never to a host that a redirect names.
            full_url = _apply_auth(current, headers, self.auth, self.secret) if same_origin else current
            try:
                response = self._send(method, full_url, headers, data)
            except _Timeout as exc:
                phase = str(exc.args[0])
                limit = self.read_timeout if phase == "read" else self.connect_timeout
                key = "api.read_timeout_s" if phase == "read" else "api.connect_timeout_s"
                raise ApiError(
                    f"request to {shown_url} timed out ({phase}, after {limit:g} s); raise {key} or check the server",
                    EXIT_TIMEOUT,
                ) from None
            except http.client.IncompleteRead as exc:
                raise ApiError(
                    f"response of {shown_url} ended after {len(exc.partial)} bytes, before the length the server announced; "
                    f"it starts with {_preview(exc.partial.decode('utf-8', 'replace'))}. Retry later or check the server.",
                    EXIT_TRUNCATED,
                ) from None
            except ssl.SSLError as exc:
                raise ApiError(f"TLS handshake with {shown_url} failed: {exc.reason or exc}; check the URL and certificates", EXIT_CONNECTION) from None
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else (str(exc) or type(exc).__name__)
                raise ApiError(
                    f"cannot connect to {shown_url}: {reason}; check the host, the port and that the server is running",
                    EXIT_CONNECTION,
                ) from None
            status = response.status
            content_type = response.headers.get("Content-Type", "unknown")
            if status in (301, 302, 303, 307, 308) and response.headers.get("Location"):
                redirects += 1
                if redirects > _MAX_REDIRECTS:
                    raise ApiError(f"{shown_url} redirected more than {_MAX_REDIRECTS} times; check the URL", EXIT_HTTP_STATUS)
                location = urllib.parse.urljoin(current, response.headers["Location"])
                logger.info("HTTP %s from %s: following the redirect to %s", status, shown_url, mask_secrets(location))
                current = location
                if status == 303:
                    method, data = "GET", None
                continue
            body_text = response.body.decode("utf-8", "replace")
            if status >= 400:
                retry_after = _retry_after_seconds(response.headers.get("Retry-After"))
                if (status == 429 or status >= 500) and attempt < max_retries:
                    if retry_after is not None and retry_after > backoff_max:
                        raise ApiError(
                            f"HTTP {status} from {shown_url} asks to retry after {retry_after:g} s, longer than "
                            f"api.backoff_max_s={backoff_max:g}; raise api.backoff_max_s or run later",
                            EXIT_HTTP_STATUS,
                        )
                    wait = retry_after
                    if wait is None:
                        wait = min(backoff * (2**attempt), backoff_max) * (0.5 + random.random() / 2)
                    attempt += 1
                    self.retries += 1
                    logger.warning(
                        "HTTP %s from %s; retry %d of %d in %.2f s%s",
                        status, shown_url, attempt, max_retries, wait,
                        " (Retry-After)" if retry_after is not None else "",
                    )
                    time.sleep(wait)
                    continue
                hint = {
                    401: "check the API token (api.auth.token_env or api.auth.token_file) and api.auth.type",
                    403: "check the API token and its permissions",
                    404: "check the URL",
                    429: "the API rate limit was hit; raise api.max_retries or run later",
                }.get(status, "check the URL and the API's status")
                raise ApiError(
                    f"HTTP {status} from {shown_url} after {attempt} retries (content type {content_type}): "
                    f"{_preview(body_text)}; {hint}",
                    EXIT_AUTH if status in (401, 403) else EXIT_HTTP_STATUS,
                )
            break
        document = self._parse(body_text, shown_url, status, content_type)
        page_record = FetchedPage(
            url=mask_secrets(current) if current != url else shown_url,
            status=status,
            headers=_public_headers(response.headers, self.auth),
            fetched_at=datetime.now(timezone.utc).isoformat(),
            body=mask_secrets(body_text),
            page=page,
        )
        return page_record, document, response.headers

    @staticmethod
    def _parse(text: str, shown_url: str, status: int, content_type: str) -> Any:
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            stripped = text.rstrip()
            # The decoder reports a string cut by the end of the body at the string's start.
            truncated = stripped[:1] in ("{", "[") and (exc.pos >= len(stripped) or exc.msg.startswith("Unterminated string"))
            problem = "is truncated JSON (it ends inside a value)" if truncated else "is not valid JSON"
            raise ApiError(
                f"response of {shown_url} (HTTP {status}, content type {content_type}) {problem}: "
                f"{exc.msg} at character {exc.pos} of {len(text)}; it starts with {_preview(text)}",
                EXIT_TRUNCATED if truncated else EXIT_NOT_JSON,
            ) from None


def fetch_api_records(url: str, api: Mapping[str, Any], records_path: str = "", key_column: str = "_key") -> ApiResult:
    """Fetch every page of an API and return the records and the pages as received.

    Pagination follows ``api.pagination``: a next URL in the body, an RFC 8288
    ``Link`` header, page-number, offset or cursor parameters. It stops on an
    empty page, a missing next link or cursor, a page identical to the one
    before (an API that ignores the page parameter), a next link or cursor
    seen before, or ``api.max_pages``. Page counts and totals reported by the
    API are not used.

    Raises
    ------
    ApiError
        On HTTP errors after retries, timeouts, refused connections, bodies
        that are not JSON, and an ingest that yields no records.
    """
    pagination = api.get("pagination") or {}
    kind = pagination.get("type", "none")
    max_pages = int(api.get("max_pages", 100))
    fetcher = _Fetcher(api)
    result = ApiResult(records=[])
    page_number = int(pagination.get("start_page", 1))
    offset = 0
    limit = int(pagination.get("limit", 100))
    cursor: Any = None
    base_url = _with_params(url, dict(api.get("params") or {}))
    next_url: str | None = base_url
    seen: set[str] = set()
    seen_cursors: set[str] = set()
    previous_body: str | None = None

    for page_index in range(max_pages):
        if next_url is None:
            break
        if kind == "page":
            current = _with_params(base_url, {pagination.get("page_param") or "page": page_number})
        elif kind == "offset":
            current = _with_params(
                base_url, {pagination.get("offset_param") or "offset": offset, pagination.get("limit_param") or "limit": limit}
            )
        elif kind == "cursor" and cursor is not None:
            current = _with_params(base_url, {pagination.get("cursor_param") or "cursor": cursor})
        else:
            current = next_url
        seen.add(current)
        page, document, headers = fetcher.request(current, page_index + 1)
        if previous_body is not None and page.body == previous_body:
            logger.warning("page %d from %s repeats the page before; stopping (does the API ignore the page parameter?)", page_index + 1, page.url)
            result.stop_reason = "repeated_page"
            break
        previous_body = page.body
        result.pages.append(page)
        records = _mask_document(extract_records(document, records_path, page.url, key_column))
        result.records.extend(records)
        logger.info("fetched page %d from %s: %d records (%d so far)", page_index + 1, page.url, len(records), len(result.records))
        if not records:
            result.stop_reason = "empty_page"
            break
        if kind == "next_url":
            found = resolve_path(document, pagination.get("next_url_path") or "next")
            next_url = urllib.parse.urljoin(current, found) if isinstance(found, str) and found else None
            result.stop_reason = "no_next_link"
        elif kind == "link_header":
            link = _next_link(headers.get("Link") or headers.get("link"))
            next_url = urllib.parse.urljoin(current, link) if link else None
            result.stop_reason = "no_next_link"
        elif kind == "page":
            page_number += 1
        elif kind == "offset":
            offset += len(records)
        elif kind == "cursor":
            cursor = resolve_path(document, pagination.get("cursor_path") or "next_cursor")
            if cursor in (None, "") or isinstance(cursor, (dict, list, bool)):
                next_url = None
                result.stop_reason = "no_cursor"
            elif str(cursor) in seen_cursors:
                logger.warning("the cursor of page %d was returned before; stopping to avoid a loop", page_index + 1)
                next_url = None
                result.stop_reason = "repeated_page"
            else:
                seen_cursors.add(str(cursor))
        else:
            next_url = None
            result.stop_reason = "single_request"
        if kind in ("next_url", "link_header") and next_url is not None and next_url in seen:
            logger.warning("the next link %s was fetched before; stopping to avoid a loop", mask_secrets(next_url))
            result.stop_reason = "repeated_page"
            next_url = None
    else:
        logger.warning("stopped after api.max_pages=%d pages; more pages may exist", max_pages)
        result.stop_reason = "max_pages"

    result.retries = fetcher.retries
    if not result.records:
        last = result.pages[-1] if result.pages else None
        body = f"; the last page starts with {_preview(last.body)}" if last else ""
        raise ApiError(
            f"the API at {mask_secrets(url)} returned no records on {len(result.pages)} page(s){body}; "
            "check the URL, the query parameters and source.records_path",
            EXIT_NO_RECORDS,
        )
    return result
