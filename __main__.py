"""Entry point Pulumi runs (`pulumi up`); the program itself lives in components.program."""

from components.program import main

main()
