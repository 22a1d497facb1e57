"""The book's table of design experiments, run over several seeds."""
