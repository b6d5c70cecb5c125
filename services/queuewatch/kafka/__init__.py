"""Kafka plumbing shared by producers and processors: topics, clients, the SDK producer."""
