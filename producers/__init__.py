"""Producers: shard a dataset into jobs on the `embed` queue and follow them to the end."""
