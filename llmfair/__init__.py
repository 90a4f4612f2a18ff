"""llmfair: measure and reduce gender bias in speech emotion recognition."""
__version__ = "0.1.0"
