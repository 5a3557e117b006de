"""Accounts: API keys, per-account limits (429) and the usage ledger that is the bill."""
