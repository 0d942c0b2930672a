"""`Mailroom.replay` against a real Redis: a replayed delivery gets a fresh age for its status
record *and* its content, so a deferral after the replay still finds the message."""

from __future__ import annotations

import redis

from settings import Settings
from tasks.api import Mailroom
from tests.support.redis_server import RedisServer
from tests.support.status import record_one
from tests.tasks.pipeline_support import SHARDS
from workers.model.reply import Code, Reply, Step
from workers.model.states import RecipientState
from workers.queue.content import ContentStore, content_key
from workers.queue.dead_letters import DeadLetters, dead_recipient
from workers.queue.status import StatusStore

GREYLISTED = Reply(Code.LOCAL_ERROR, "4.7.1", "greylisted", Step.RCPT_TO)
CONTENT_TTL = 7200


def test_replay_refreshes_the_content_ttl_with_the_status_record(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    settings = Settings(
        redis_url=redis_server.url, shards=SHARDS, max_age=3600, content_ttl=CONTENT_TTL
    )
    mailroom = Mailroom(settings, client=redis_client)
    message_id = mailroom.notify(
        sender="shop@example.com", to=["a@example.org"], subject="Hi", text="x"
    )
    # It expired after MAX_AGE, and its content is near the end of its own retention.
    status = StatusStore(redis_client, ttl=60)
    record_one(
        status, message_id, {"a@example.org": (RecipientState.EXPIRED, GREYLISTED)}, [], None
    )
    DeadLetters(redis_client, ttl=60).add(
        message_id, "example.org", "expired", [dead_recipient("a@example.org", GREYLISTED)], 0.0
    )
    redis_client.expire(content_key(message_id), 2)

    assert mailroom.replay([message_id]) == 1

    # The replayed delivery has MAX_AGE again to be deferred in: its content must outlive that.
    assert redis_client.ttl(content_key(message_id)) > 3600
    assert ContentStore(redis_client, ttl=60).get(message_id) is not None
    assert redis_client.ttl(f"mailroom:msg:{message_id}") > 3600
