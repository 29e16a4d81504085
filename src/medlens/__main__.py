"""``python -m medlens`` runs the command line (also under ``torchrun -m medlens train ...``)."""

from medlens.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
