"""Entry point Pulumi runs (`pulumi up`); the program itself lives in pulumi_llmd.program."""

from pulumi_llmd.program import main

main()
