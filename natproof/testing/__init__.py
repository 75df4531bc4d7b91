"""Test support: a deterministic MASQUERADE simulator and hypothesis strategies that drive it."""
