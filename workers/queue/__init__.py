"""The queue manager's state in Redis: content, status records, deferred set, dead letters,
leases, retention and the sweeper. It knows nothing of SMTP (import-linter checks it).
"""
