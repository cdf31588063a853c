"""Domains that exist only to test the generic hosts (see docs/extending.md)."""
