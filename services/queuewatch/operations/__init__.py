"""Operator tools that act on the log: the dead-letter queue (`queuewatch dlq`)."""
