"""An example team's verifier package (see ../README.md)."""
