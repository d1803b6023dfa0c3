"""`python -m difforge ...` (also what `torchrun -m difforge` runs)."""

from difforge.cli import main

if __name__ == "__main__":
    main()
