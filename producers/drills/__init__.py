"""Drills: a real stack put through faults, with figures that say whether anything was lost or
doubled. `chaos`: one machine, workers, the store worker and Redis SIGKILLed mid-ingest, images
that poison their jobs. `cluster`: hosts as network namespaces over TCP, links cut (root)."""
