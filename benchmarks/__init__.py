"""grace_fast benchmarks: one script per op (bench_<op>.py), shared timing and reporting in utils.py."""
