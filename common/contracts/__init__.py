"""Message contracts: what crosses a process boundary, as pydantic v2 models."""
