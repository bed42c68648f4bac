"""The subscriber side: `thermoscreen log` (store every result once) and `thermoscreen report`."""
