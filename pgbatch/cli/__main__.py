"""``python -m pgbatch.cli``: the same as the ``pgbatch`` console script."""

from pgbatch.cli.app import main

if __name__ == "__main__":
    main()
