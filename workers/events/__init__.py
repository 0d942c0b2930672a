"""Delivery events leaving Mailroom: each consumer (a webhook endpoint, the producer's Celery
task) reads the event log through its own consumer group and acknowledges a batch only once it
was handed over, so every event reaches it at least once, across restarts and crashes. Knows
nothing of Celery (the task is sent through a callable, as the sweeper enqueues), SMTP or the
delivery engine."""
