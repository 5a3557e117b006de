"""Helpers the tests share, so that no test file imports another."""
