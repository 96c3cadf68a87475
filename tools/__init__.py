"""The `jade` command line: the composition root and the operations commands."""
