"""Pure access control: bearer tokens, signed tickets, token-bucket rate limits."""
