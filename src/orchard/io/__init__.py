"""Input and output: filesystem layer (fs), listing and selection (listing), executor reads (reader)."""
