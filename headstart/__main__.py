"""`python -m headstart`: the command line (also under torchrun -m and accelerate launch -m)."""
from .cli import main

main()
