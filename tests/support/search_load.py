"""Clients that loop searches against a gateway, in a process of their own so that their work
does not delay the measurements of the test that starts them.

`python -m tests.support.search_load BASE_URL CLIENTS SECONDS PARAMS_JSON` runs `CLIENTS`
concurrent clients for `SECONDS`, each sending `GET /orders/search` with the parameter sets of
the JSON list in turn, and prints the count of answers by status as one JSON object.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import Counter
from typing import Any

import httpx
import orjson


async def loop_searches(
    base_url: str, clients: int, seconds: float, params: list[dict[str, Any]]
) -> Counter[int]:
    answers: Counter[int] = Counter()
    deadline = time.monotonic() + seconds

    async def client(first: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            n = first
            while time.monotonic() < deadline:
                response = await http.get("/orders/search", params=params[n % len(params)])
                answers[response.status_code] += 1
                n += 1

    await asyncio.gather(*(client(i * 3) for i in range(clients)))
    return answers


def main() -> None:
    base_url, clients, seconds, params = sys.argv[1:5]
    answers = asyncio.run(
        loop_searches(base_url, int(clients), float(seconds), orjson.loads(params))
    )
    print(orjson.dumps(dict(answers), option=orjson.OPT_NON_STR_KEYS).decode())


if __name__ == "__main__":
    main()
