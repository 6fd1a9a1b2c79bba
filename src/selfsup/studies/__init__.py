"""Studies: small fixed-budget grids of SimCLR runs (augmentation pairs, temperature, projection head)."""
