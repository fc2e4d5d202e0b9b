"""``python -m pytest_llmperf.topology``: the documented command for the node CLI (``pytest_llmperf.node``)."""

if __name__ == "__main__":
    import sys

    from pytest_llmperf.node.__main__ import main

    sys.exit(main())
