"""What the tests, the fault drills, the benchmark and `make run` share to run the system.

- `processes`: start `python -m <module>` the way users do, wait until it is ready, read its
  log, stop or kill it, and account for the CPU and memory it used;
- `isolation`: where the services answer, and a slice of them (a RabbitMQ vhost, a PostgreSQL
  database, a Redis key prefix) that one run owns and removes;
- `system`: a gateway, N command workers and M projectors started together on one slice;
- `load`: the order-command load over HTTP, with the knobs its callers turn.

`processes` and `system` use the standard library only, so `scripts/run.py` works before the
project is installed.
"""
