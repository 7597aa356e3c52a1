"""Knowledge bases: sources, ingestion, retrieval."""
