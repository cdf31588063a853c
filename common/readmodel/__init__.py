"""The Redis read model: key layout and the few writes shared between processes."""
