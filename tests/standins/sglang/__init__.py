"""A stand-in for the ``sglang`` package: only ``python -m sglang.launch_server`` is emulated.

It serves through pytest-llmperf's simulated engine (see ``launch_server``);
nothing else of SGLang exists here.
"""

__version__ = "0.5.6.post2"
