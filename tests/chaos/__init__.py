"""The fault drills behind `make chaos`: a bounded load over HTTP, one fault at a time, and
every promise checked afterwards. `python -m tests.chaos --help`."""
