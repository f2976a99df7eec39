"""The SQLite backend of the store: schema, named queries, the writer and the readers."""
