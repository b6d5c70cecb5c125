"""ClickHouse access: one client for the embedded engine and for a server, migrations, queries.

``chdb://PATH`` opens the embedded engine in this process (one process per folder);
``http(s)://user:password@host:port`` talks to a server. Everything above this package uses
the same clickhouse-connect client either way, so the sinks and the query path have one code
path for both layouts.
"""
