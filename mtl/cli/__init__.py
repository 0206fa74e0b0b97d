"""Every command line in one place: one module per command, each a `main(argv) -> exit code` that
parses arguments, sets up logging and calls one library function. `scripts/<command>.py` and the
`mtl-train` console script only call these."""
