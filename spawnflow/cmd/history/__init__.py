"""``spawnflow history list|show|events|export|import|timeline|purge|stats``: one module
per command.

Every command takes ``--db URL`` (or a SQLite file path) instead of the
configured ``[database] connection``. Listings take cliff's ``-f``: the table
is a compact view that fits 80 columns (short build ids, shortened names and
errors, UTC times); json, yaml, csv and value give every field in full
(ISO 8601 times, durations in seconds).
"""
