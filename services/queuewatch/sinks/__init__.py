"""Kafka -> ClickHouse sinks: the raw report store and the window aggregates.

``checkpoint`` holds the commit protocol every sink follows; ``raw`` and ``windows`` only say
how a Kafka message becomes a row; ``runner`` runs them as processes.
"""
