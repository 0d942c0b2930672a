"""The worker tasks hand their message back when Redis fails under them, and only then."""

from __future__ import annotations

import pytest
import redis
from celery.exceptions import Reject

from tasks.worker_app import _requeue_when_redis_fails


@pytest.mark.parametrize("error", [redis.ConnectionError("down"), redis.TimeoutError("slow")])
def test_a_redis_failure_requeues_the_task(error: redis.RedisError) -> None:
    with pytest.raises(Reject) as rejected, _requeue_when_redis_fails():
        raise error
    assert getattr(rejected.value, "requeue", None) is True  # celery-types lacks the attribute


def test_a_bug_fails_the_task_instead_of_looping() -> None:
    with pytest.raises(KeyError), _requeue_when_redis_fails():
        raise KeyError("bug")
