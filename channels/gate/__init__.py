"""The gate every provider call passes: circuit breaker, then rate limit (guard.py)."""
