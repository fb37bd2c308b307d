"""One module per provider (and the push channel, which fans out to its platforms' senders)."""
