"""Benchmarks behind `xnect-bench` (one module per subcommand)."""
