"""`mailroom catcher`: a local SMTP server that accepts every message and keeps it in a Maildir,
so a demo or a test run never sends mail to the internet (scripts/run routes `*` to it).

`maildir` writes and reads the Maildir, `handler` is the aiosmtpd handler and the one line
printed per message, `web` the read-only page listing what was caught.
"""
