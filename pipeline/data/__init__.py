"""Thermogram data shared by the runtime and training: DMR-IR readers (`dmr`, with the fixed-width
matrix reader in `grid`), 16-bit PNG recordings with their scale and origins (`recording`, written
by `thermoscreen convert`) and the synthetic generator (`synthetic`)."""
