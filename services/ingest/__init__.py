"""ingest: the front door where newsrooms push articles onto `articles.ingested.v1`."""
