"""Retries live in one place: which status codes, and the backoff the dashboard shows."""

from __future__ import annotations

import threading

import grpc
import pytest

from meshnode.cli import _retry
from meshnode.cli._exceptions import NodeError, PermissionDenied, Unreachable


def test_retryable_codes_are_one_frozenset() -> None:
    assert isinstance(_retry.RETRYABLE, frozenset)
    assert grpc.StatusCode.UNAVAILABLE in _retry.RETRYABLE
    assert grpc.StatusCode.PERMISSION_DENIED not in _retry.RETRYABLE
    assert grpc.StatusCode.INVALID_ARGUMENT not in _retry.RETRYABLE
    assert _retry.is_retryable(Unreachable("x", "UNAVAILABLE"))
    assert not _retry.is_retryable(PermissionDenied("x", "PERMISSION_DENIED"))
    assert not _retry.is_retryable(ValueError())


def test_retrying_reports_attempts_then_succeeds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_retry, "BACKOFF_INITIAL_S", 0.01)
    seen: list[tuple[int, float]] = []
    calls = iter([Unreachable("down", "UNAVAILABLE"), Unreachable("down", "UNAVAILABLE"), None])

    def attempt() -> str:
        exc = next(calls)
        if exc is not None:
            raise exc
        return "ok"

    result = None
    for a in _retry.retrying(threading.Event(), lambda n, wait, exc: seen.append((n, wait))):
        with a:
            result = attempt()
    assert result == "ok"
    assert [n for n, _ in seen] == [1, 2]
    assert all(0 < wait <= _retry.BACKOFF_MAX_S for _, wait in seen)


def test_retrying_does_not_retry_other_errors_and_stops_on_request() -> None:
    with pytest.raises(PermissionDenied):
        for a in _retry.retrying(threading.Event(), lambda *_: None):
            with a:
                raise PermissionDenied("no", "PERMISSION_DENIED")
    stop = threading.Event()
    stop.set()
    with pytest.raises(NodeError):
        for a in _retry.retrying(stop, lambda *_: None):
            with a:
                raise Unreachable("down", "UNAVAILABLE")
