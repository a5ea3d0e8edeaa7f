"""A seeded, deterministic sample ledger of a key-account sales organisation (for demos and benchmarks)."""

from .generator import DemoBatch, DemoLedger, generate, write_batches

__all__ = ["DemoBatch", "DemoLedger", "generate", "write_batches"]
