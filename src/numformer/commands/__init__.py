"""The `numformer` commands, one module per command, named after it. Each defines
`add_arguments(parser)` and `main(args) -> int`; numformer.cli dispatches to them."""
