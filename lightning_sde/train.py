"""`python -m lightning_sde.train ...` is `lsde-train ...`."""

from lightning_sde.cli.train import main

if __name__ == "__main__":
    main()
