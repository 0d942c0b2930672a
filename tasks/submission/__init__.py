"""SMTP submission (RFC 6409) for applications that can only be pointed at an SMTP server.

`mailroom submission` runs `server.build_server(settings)`: clients authenticate over TLS with an
account of the account file (`accounts`), failed logins are limited per client address in Redis
(`auth_limits`), and a message is answered 250 only once `Mailroom.submit` has stored and enqueued
it (`handler`). Replies always carry enhanced status codes (`replies`); the listener adds
Received, Message-ID and Date and removes Bcc, and changes nothing else (`headers`).
"""
