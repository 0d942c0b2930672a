"""OAuth 2.0 access tokens for SMTP AUTH XOAUTH2 relays: Microsoft 365 (client credentials, with
msal) and Google Workspace (a service account with domain-wide delegation, with google-auth).

`tokens` holds the values (a `Token`, or why there is none), `microsoft` and `google` fetch one
from their provider (synchronous libraries, run in a thread with bounded time), and `cache`
keeps one token for the whole cluster in Redis, encrypted (`sealing`), refreshed by one worker
shortly before it expires. It knows nothing of SMTP (import-linter checks it); the SMTP client
knows nothing of it: the delivery agent hands the session a token already fetched.
"""
