"""`mailroom check --sender-domain D`: read a sender domain's DNS (SPF, DKIM, DMARC, MTA-STS,
TLS-RPT) through the configured resolver and say, record by record, what is right and what to fix.

records.py parses the tag-list records (pure), spf_terms.py SPF's terms (pure), spf.py evaluates
SPF for what this deployment sends from, dns_reader.py is the resolver boundary, findings.py turns
records into one `Finding` each.
"""
