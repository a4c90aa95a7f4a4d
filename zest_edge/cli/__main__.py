"""`python -m zest_edge.cli ...`: the zest-edge command without its console script."""
from . import main

main()
