"""thermoscreen runtime: capture, preprocess, classify, session, publish.

Thermography is cleared only as an adjunct to mammography; nothing here is a diagnosis.
This package never imports torch or training (tests/unit/test_architecture.py checks it).
"""

DISCLAIMER = (
    "thermoscreen is a research and screening-support tool. Breast thermography is cleared only "
    "as an adjunct to mammography; its output is not a diagnosis and must not replace mammography "
    "or clinical examination."
)

__version__ = "0.1.0"
