"""Thermogram data shared by the runtime and training: DMR-IR readers and the synthetic
generator."""
