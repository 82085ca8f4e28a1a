"""Entry point of the ``llmd`` component package: Pulumi runs ``python provider/`` to read the
schema and to construct components (see :mod:`pulumi_llmd.package`)."""

from pulumi_llmd.package import main

if __name__ == "__main__":
    main()
