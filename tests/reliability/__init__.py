"""The reliability suite's short versions (the long ones: ``python -m loadtests.reliability``).

Scenarios come from :mod:`loadtests.reliability_scenarios`; hostile clients, fuzzing,
file-descriptor hygiene and socket modes are tested here directly.
"""
