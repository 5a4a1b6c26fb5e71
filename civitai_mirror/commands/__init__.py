"""The commands, one module per stage of the pipeline; ``civitai_mirror.cli.COMMANDS`` says which
module holds which command. Each command parses its options, calls the package's plain functions
and prints: no work is done here.
"""
