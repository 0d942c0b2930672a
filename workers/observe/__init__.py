"""What operators see: metrics counted in Redis and one log line per attempt."""
