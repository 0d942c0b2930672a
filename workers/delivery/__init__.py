"""Where a message goes and how: MX resolution and the delivery agent that walks the hosts."""
