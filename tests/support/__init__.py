"""Test support: isolated service endpoints per run, process factories, waiting helpers."""
