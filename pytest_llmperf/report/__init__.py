"""Reports: the terminal summary, the JSON report, per-case results in the reference layout.

Each reads the ``CaseResult``s the session wrote; none writes back.
"""
