"""`python -m rcdm_cli` is the same program as the `rcdm` console script."""

from rcdm_cli.cli.app import main

if __name__ == "__main__":
    main()
