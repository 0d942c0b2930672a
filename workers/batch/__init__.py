"""Run one batch of deliveries: the work of one `mailroom.deliver` task, minus Celery.

Every item is checked before any network traffic: a stale attempt number (its retry is already
scheduled) or nothing pending (a redelivered task whose recipients are done) means skip. A lease
held by another worker means that worker may still be delivering it (kombu hands a task to a
second worker after the visibility timeout even while the first runs it), or may have died: the
item is parked in the deferred set until the lease expires, so it is never dropped; if the holder
finished, the parked copy finds its attempt stale or nothing pending and skips.

Then the cluster-wide rate gate (`workers.traffic.rate_limits`): a delivery over its
destination's rate is deferred to the time the limiter names, without opening a connection or
waiting in a worker slot. A receiver's server-wide throttling reply (`is_throttling`: not
greylisting, which defers its recipient only) slows the whole destination down. The connection
cap is the delivery agent's: it counts connections, not deliveries, and a delivery that finds
it full waits on the event loop for one of this worker's connections to its destination
(`workers.delivery.agent`).

The rest run concurrently on the process's event loop, and each is disposed of as soon as its
own session ends, not when the whole batch does, so a delivered recipient is marked long before
the task is acknowledged.

Once a session has started, its delivery is never lost nor sent twice because recording failed.
Every session of the batch is awaited whatever happens to the others' records. A result Redis
would not take (an outage, a timeout) is kept with its lease and recorded again with backoff
once the batch's sessions are over, until the leases are about to expire (`record_window`):
meanwhile nobody else can deliver it, so a recipient that got its 250 is not sent again. Only a
Redis outage longer than that hands the unrecorded deliveries back (`UnrecordedError`, a
`RedisError`: the worker requeues its task, and they are tried again; the documented at-least-
once case). A result that cannot be applied for any other reason (a bug) is handed back at
once: its delivery is deferred at the same attempt, so the sweeper brings it back; the rest of
its group is recorded one by one. A session still running at `session_limit` (past its own
deadline: a bug) is cancelled and deferred, so nothing holds a worker's thread for ever.
"""

from workers.batch.items import Handled, Item, Submit, UnrecordedError
from workers.batch.runner import DEFAULT_TIMING, BatchRunner, BatchTiming
from workers.batch.stores import BatchStores

__all__ = [
    "DEFAULT_TIMING",
    "BatchRunner",
    "BatchStores",
    "BatchTiming",
    "Handled",
    "Item",
    "Submit",
    "UnrecordedError",
]
