"""Plug-ins defined outside the package, one file each, for tests/test_plugins.py."""
