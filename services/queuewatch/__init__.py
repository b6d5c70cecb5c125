"""queuewatch: live border-crossing queue reports.

Producers publish queue reports to Kafka (the system of record); independent processors
validate, de-duplicate and aggregate them over event time; ClickHouse holds projections
that can be rebuilt by replaying the log.
"""

__version__ = "0.1.0"
