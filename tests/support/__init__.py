"""Helpers the tests share, imported one way: `from support.<module> import ...`."""
