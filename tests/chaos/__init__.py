"""The chaos harness: a real server under a seeded storm of faults, and a verdict.

``python -m tests.chaos --help`` runs it; ``scripts/chaos.sh`` runs a long one;
``test_chaos.py`` runs a short one as part of the suite.
"""
