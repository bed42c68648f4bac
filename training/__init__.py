"""thermoscreen training: datasets, patient-level splits, synthetic data, train, evaluate, export.

Imports `pipeline` (one preprocessing implementation for training and serving); `pipeline` never
imports this package. Thermography is cleared only as an adjunct to mammography: models trained
here are screening-support research tools, not diagnostic devices.
"""
