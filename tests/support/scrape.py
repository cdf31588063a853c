"""Reading a process's Prometheus metrics the way a scraper does."""

from __future__ import annotations

from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


@dataclass(frozen=True)
class Scrape:
    """One scrape of `/metrics`: its metric families and samples."""

    families: dict[str, str]
    """Metric family name -> type (counter, gauge, histogram, ...)."""
    samples: list[Sample]

    def has(self, family: str) -> bool:
        return family in self.families

    def total(self, name: str, **labels: str) -> float:
        """The sum of the samples called `name` whose labels include `labels`."""
        return sum(
            s.value
            for s in self.samples
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    def series(self, name: str) -> list[dict[str, str]]:
        """The label sets of every sample called `name`."""
        return [s.labels for s in self.samples if s.name == name]


def parse(text: str) -> Scrape:
    families: dict[str, str] = {}
    samples: list[Sample] = []
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        samples += [Sample(s.name, dict(s.labels), s.value) for s in family.samples]
    return Scrape(families, samples)


async def scrape(base_url: str, headers: dict[str, str] | None = None) -> Scrape:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{base_url}/metrics", headers=headers)
    response.raise_for_status()
    return parse(response.text)
