"""Value types every part of the engine shares: replies, outcomes, the message, reports.

Standard library only: importing them costs nothing and pulls in no network or Redis code.
"""
