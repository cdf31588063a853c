"""The obvious pipeline, measured beside this project: a naive peer built with FastStream.

Three processes, each `python -m bench.peer.<role> --host H --port P`:

- `gateway`: FastAPI, `POST /orders` validated by a pydantic model, published persistent to a
  durable queue with a publisher confirm, answered 202 with the ids;
- `worker`: one event row per command in PostgreSQL (an asyncpg pool), the event published to a
  fanout exchange with a confirm, the command acked after both;
- `projector`: the order's hash and the customer's sorted set in Redis, and the same
  read-your-writes notification this project's projectors publish, in one transaction.

Confirms, durable quorum queues, persistent messages, a connection pool and a prefetch: what a
competent first version has. No outbox, no deduplication, no version checks, no command statuses:
what the comparison prices. The peer imports nothing from this project, so it is what a team
would write on its own.
"""
