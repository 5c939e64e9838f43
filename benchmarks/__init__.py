"""pgbatch's benchmark suite: ``python -m benchmarks`` (see BENCHMARKS.md).

Each scenario runs pgbatch and the same SQL work done by PostgreSQL alone, in one sitting on
one server, and reports both with their ratio.
"""
