"""DKIM (RFC 6376, RFC 8463): the signing keys, read once at start-up, and the signer that adds a
DKIM-Signature to each message once, when it is built."""
