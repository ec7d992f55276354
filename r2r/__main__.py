"""`python -m r2r`: the same as the `r2r` console script."""
from r2r.cli import main_entry

main_entry()
