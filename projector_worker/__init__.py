"""The projector: consumes committed events and keeps the order views in Redis."""
