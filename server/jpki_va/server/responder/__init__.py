"""The responder: index, ingest and the lookups behind every answer."""
