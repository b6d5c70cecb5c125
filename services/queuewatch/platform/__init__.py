"""The local platform: the Kafka broker, the `queuewatch up` supervisor and `status`."""
