"""Mixed-precision search: precision groups, cost models, strategies and the oracle."""
