"""enrichment: gives each article a section and related-story links, onto `stories.enriched.v1`."""
