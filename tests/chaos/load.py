"""The drills' load is the harness's (`harness.load`); these are the names tests import."""

from harness.load import ADDRESS, LoadShape

__all__ = ["ADDRESS", "LoadShape"]
