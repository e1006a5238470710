"""The database: the gateway's tables, connecting, migrations."""
