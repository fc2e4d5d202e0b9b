"""pytest-llmperf: LLM serving performance as a pytest regression suite."""

__version__ = "0.1.0"
