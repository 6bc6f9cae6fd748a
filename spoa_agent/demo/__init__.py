"""Run the whole gateway locally (make demo) and the pieces tests and benchmarks share."""
