"""Fault tests: malformed inputs, and real processes killed, restarted, frozen."""
