"""Retries, in one place: which gRPC status codes are worth retrying, and the backoff.

One-shot commands never retry (a script wants the exit code now); ``meshctl top`` and its event tail
retry forever through ``retrying`` until the user quits.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Final

import grpc
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from meshnode.cli._exceptions import NodeError

RETRYABLE: Final[frozenset[grpc.StatusCode]] = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.ABORTED}
)
_RETRYABLE_NAMES: Final = frozenset(code.name for code in RETRYABLE)

BACKOFF_INITIAL_S: Final = 0.5
BACKOFF_MAX_S: Final = 5.0


def is_retryable(exc: BaseException) -> bool:
    """True for node errors whose status is in ``RETRYABLE`` (the node may come back)."""
    return isinstance(exc, NodeError) and exc.code in _RETRYABLE_NAMES


def retrying(
    stop: threading.Event,
    on_retry: Callable[[int, float, NodeError], None],
) -> Retrying:
    """A tenacity ``Retrying`` that retries retryable node errors with capped exponential backoff.

    Args:
        stop: set it to end the wait at once (the user quit); the pending attempt then raises.
        on_retry: called before each wait with (attempt number, seconds until the next, the error),
            so the dashboard can say "reconnecting (attempt N, next in Xs)".
    """

    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        if isinstance(exc, NodeError):
            on_retry(state.attempt_number, wait, exc)

    def sleep(seconds: float) -> None:
        stop.wait(seconds)

    def should_stop(state: RetryCallState) -> bool:
        return stop.is_set()

    return Retrying(
        retry=retry_if_exception(is_retryable),
        wait=wait_exponential_jitter(multiplier=BACKOFF_INITIAL_S, max=BACKOFF_MAX_S, jitter=0.2),
        stop=should_stop,
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
