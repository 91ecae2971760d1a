"""HTTP for remote teachers: JSON requests with retries, back-off, Retry-After and bounded waits, and
a journal that keeps every answered request on disk before it is used.

Servers fail, and asking a large teacher is the expensive step of distillation, so nothing a
server has answered may be lost to a crash or an outage. The API key is read from the environment
when a request is sent, and redacted from any server text we repeat.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import queue
import random
import threading
import time
from pathlib import Path
from typing import Any, Callable

import requests

from kdistill.config import EndpointConfig
from kdistill.errors import KdistillError

log = logging.getLogger(__name__)

MAX_RETRY_AFTER_S = 300.0
"""Longest Retry-After we honour; a server asking for more is treated as asking for this."""


class RetryableError(Exception):
    """A failed attempt worth repeating: timeout, lost connection, 5xx, 429 or a malformed reply."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RequestFailed(Exception):
    """A request that still failed after every retry."""


def check_models_reply(reply: Any) -> None:
    if not isinstance(reply, dict) or not isinstance(reply.get("data"), list) or not reply["data"]:
        raise RetryableError("a /models reply without a list of models")


def check_tokenize_reply(reply: Any) -> None:
    tokens = reply.get("tokens") if isinstance(reply, dict) else None
    if not tokens or not isinstance(tokens[0], dict):
        raise RetryableError("a /tokenize reply without token pieces")


def retry_hint(config_key: str) -> str:
    """How to make the endpoint teacher wait longer for its server, in the config's own keys."""
    return (f"to wait longer, raise {config_key}.endpoint.max_retries or max_backoff_s, or timeout_s for a slow "
            "answer")


# ------------------------------------------------------------------------------------------------
# The journal: every answered request, kept before it is used


class Journal:
    """Append-only JSONL of answered requests, one fsynced line each, keyed by the request's hash.

    A line cut short by a crash is ignored on reading (that request is simply asked again), and the
    next append starts on a fresh line. A key already present is never written twice.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._records = self._read()

    def _read(self) -> dict[str, dict[str, Any]]:
        records: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return records
        with open(self.path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                try:
                    record = json.loads(line)
                    records[record["key"]] = record
                except (ValueError, KeyError, TypeError):
                    log.warning("%s line %d is not a complete record (cut short by a crash?); that request "
                                "will be asked again", self.path, number)
        return records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._records.get(key)

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            if record["key"] in self._records:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab") as f:
                if f.tell() > 0 and not self._ends_with_newline():
                    f.write(b"\n")
                f.write(line)
                f.flush()
                os.fsync(f.fileno())
            self._records[record["key"]] = record

    def _ends_with_newline(self) -> bool:
        with open(self.path, "rb") as f:
            f.seek(-1, os.SEEK_END)
            return f.read(1) == b"\n"


# ------------------------------------------------------------------------------------------------
# HTTP: one attempt, and the retry loop around it


def _retry_after_s(value: str | None) -> float | None:
    """Retry-After as seconds: a number, or an HTTP date."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


class Transport:
    """Sends JSON requests with retries; shared by the worker threads, which pool their sessions."""

    def __init__(self, settings: EndpointConfig) -> None:
        self.settings = settings
        self._sessions: queue.SimpleQueue[requests.Session] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._not_before = 0.0  # monotonic time before which no worker sends (after a 429)
        self._random = random.Random()
        self.num_attempts = 0
        self.num_retries = 0
        self.revive: Callable[[], bool] | None = None
        """For a server kdistill started: starts it again if it died; True when it did (then retry at once)."""

    def redact(self, text: str) -> str:
        key = os.environ.get(self.settings.api_key_env, "")
        return text.replace(key, "***") if len(key) >= 4 else text

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.settings.api_key_env, "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def attempt(self, url: str, body: dict[str, Any] | None) -> Any:
        """One HTTP round trip: the decoded JSON, a RetryableError, or a KdistillError for a request
        that asking again cannot fix (bad request, refused key, unknown route)."""
        with self._lock:
            self.num_attempts += 1
        # sessions keep connections open across batches; each is used by one worker at a time
        try:
            session = self._sessions.get_nowait()
        except queue.Empty:
            session = requests.Session()
        try:
            response = session.request("POST" if body is not None else "GET", url, json=body, headers=self._headers(),
                                       timeout=(min(10.0, self.settings.timeout_s), self.settings.timeout_s))
        except requests.Timeout:
            raise RetryableError(f"no answer within {self.settings.timeout_s:g} s") from None
        except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                requests.exceptions.ContentDecodingError) as err:
            raise RetryableError(f"the connection failed ({type(err).__name__})") from None
        finally:
            self._sessions.put(session)
        return self._decode(response, url)

    def _decode(self, response: requests.Response, url: str) -> Any:
        status = response.status_code
        said = self.redact(response.text[:200].strip().replace("\n", " "))
        if status == 429 or status == 408 or status >= 500:
            raise RetryableError(f"HTTP {status} ({said})", _retry_after_s(response.headers.get("Retry-After")))
        if status in (401, 403):
            raise KdistillError(f"{url} refused the request (HTTP {status}: {said}); put a valid API key in the "
                                f"environment variable {self.settings.api_key_env} (the endpoint's api_key_env), "
                                "one this server accepts for this model.")
        if status in (404, 405):
            raise KdistillError(f"{url} answered HTTP {status} ({said}); check teacher.endpoint.base_url, "
                                "teacher.model and teacher.endpoint.api.")
        if status >= 400:
            raise KdistillError(f"{url} rejected a request (HTTP {status}: {said}); if the prompt is too long, "
                                "lower data.max_chars or teacher.few_shot_per_label, or give the server more context.")
        try:
            return response.json()
        except ValueError:
            raise RetryableError(f"a reply that is not JSON ({said[:80]!r})") from None

    def ask(self, url: str, body: dict[str, Any] | None, check: Any = None,
            stop: threading.Event | None = None) -> Any:
        """The reply, after up to max_retries retries; ``check(reply)`` raising RetryableError marks
        a malformed reply. Raises RequestFailed when every attempt failed or ``stop`` was set."""
        last = "no attempt made"
        for attempt in range(self.settings.max_retries + 1):
            self._wait_if_paused()
            if stop is not None and stop.is_set():
                raise RequestFailed("stopped because another request failed")
            try:
                reply = self.attempt(url, body)
                if check is not None:
                    check(reply)
                return reply
            except RetryableError as err:
                last = str(err)
                if attempt == self.settings.max_retries:
                    break
                with self._lock:
                    self.num_retries += 1
                if self.revive is not None and self.revive():
                    continue
                delay = self._delay(attempt, err.retry_after)
                log.warning("%s; retry %d of %d in %.1f s", self.redact(f"{url}: {last}"), attempt + 1,
                            self.settings.max_retries, delay)
                time.sleep(delay)
        raise RequestFailed(f"{url}: {last} (after {self.settings.max_retries + 1} attempts)")

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential back-off with jitter, so workers that failed together don't retry together;
        a server's Retry-After wins and pauses every worker, not just this one."""
        if retry_after is not None:
            delay = min(retry_after, MAX_RETRY_AFTER_S)
            with self._lock:
                self._not_before = max(self._not_before, time.monotonic() + delay)
            return delay
        ceiling = min(self.settings.max_backoff_s, self.settings.backoff_s * 2 ** attempt)
        return ceiling * (0.5 + 0.5 * self._random.random())

    def _wait_if_paused(self) -> None:
        wait = self._not_before - time.monotonic()
        if wait > 0:
            time.sleep(wait)
