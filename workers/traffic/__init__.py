"""Cluster-wide traffic shaping in Redis: rate limits, connection caps, slow-down, profiles."""
