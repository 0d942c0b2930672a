"""The SMTP client: open a session, run mail transactions on it, keep connections for reuse.

It knows nothing of Redis, the queue or traffic shaping (import-linter checks it): a session
gets what it needs (policy, timeouts, a lease slot) as values.
"""
