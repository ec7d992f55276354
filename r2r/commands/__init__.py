"""One module per `r2r` subcommand: argument handling and printing only; the work is in the packages below."""
