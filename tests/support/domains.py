"""The domains, projections and queue names of a test run, from its settings (never a hard-coded
list: every projection the loaded domains register is covered)."""

from __future__ import annotations

from functools import lru_cache

from common.domain import Registry, load_domains
from common.messaging.topology import Topology
from common.settings import Settings


@lru_cache(maxsize=8)
def _registry(domains: str) -> Registry:
    return load_domains(domains)


def registry_of(settings: Settings | None = None) -> Registry:
    """The registry of `settings`' domains (of the environment's, by default)."""
    return _registry((settings or Settings()).domains)


def topology_of(settings: Settings | None = None) -> Topology:
    """The exchanges and queues of `settings` (of the environment's, by default)."""
    settings = settings or Settings()
    return Topology(settings.app_prefix, tuple(registry_of(settings).projections))


def projection_names(settings: Settings | None = None) -> list[str]:
    """Every projection of the loaded domains."""
    return list(registry_of(settings).projections)


def projection_queues(settings: Settings | None = None) -> list[str]:
    """The queue of every projection of the loaded domains."""
    topology = topology_of(settings)
    return [topology.projection_queue(name) for name in topology.projections]
