"""Which bounces put a recipient on the suppression list: the replies that say the address itself
is gone, never those about the sender, the message, the server or a policy that may change.

The table (the README's "Suppression list" repeats it):

| step       | enhanced codes                                   | meaning                          |
|------------|--------------------------------------------------|----------------------------------|
| rcpt_to    | 5.1.1, 5.1.2, 5.1.3, 5.1.6, 5.1.10, 5.2.1, 5.7.1 | no such mailbox or domain, bad   |
|            |                                                  | address, moved, null MX,         |
|            |                                                  | disabled, refused for this       |
|            |                                                  | recipient                        |
| resolve_mx | 5.1.2 (NXDOMAIN), 5.1.10 (null MX, RFC 7505)     | the domain takes no mail         |

A 5xx without an enhanced code says too little to act on. Mailbox full (5.2.2), a sender the
receiver will not authenticate (5.7.515, 5.7.26), anything at MAIL FROM or DATA, and every 4xx are
never hard bounces of the address: suppressing on them would stop mail to people who still read
it. MX_DENY_NETWORKS' own 5.7.1 at resolve_mx is the operator's policy, not the address's.
"""

from __future__ import annotations

from workers.model.reply import Reply, Step

_HARD = {
    Step.RCPT_TO: frozenset({"5.1.1", "5.1.2", "5.1.3", "5.1.6", "5.1.10", "5.2.1", "5.7.1"}),
    Step.RESOLVE_MX: frozenset({"5.1.2", "5.1.10"}),
}


def is_hard_bounce(reply: Reply) -> bool:
    """Whether `reply`, the last one a recipient got, means its address should be suppressed."""
    return reply.reply_class == 5 and reply.enhanced in _HARD.get(reply.step, frozenset())
