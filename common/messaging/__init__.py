"""RabbitMQ: topology, publishing with confirms, and the consumer runtime."""
