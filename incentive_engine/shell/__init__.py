"""The imperative shell: ledger storage, file ingest, cycles on the database, the CLI."""
