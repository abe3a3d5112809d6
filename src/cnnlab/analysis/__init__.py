"""Architecture analysis: per-layer tables, MACs, weight sharing in numbers, family summaries."""
