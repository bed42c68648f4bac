"""The capture stage: `base` (the Source contract, URIs, options), one module per backend, and
`factory.open_source` that picks one by URI."""
