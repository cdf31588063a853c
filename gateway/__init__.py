"""The HTTP gateway: validates commands, queues them with publisher confirms, reports status."""
