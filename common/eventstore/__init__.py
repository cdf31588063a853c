"""The PostgreSQL event store: schema, appends with expected versions, gap-safe reads."""
