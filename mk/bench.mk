# The benchmark report (docs/benchmarks.md): every benchmark, one report with plots. Included by the Makefile.
#
#   make bench          everything, full size (about 10-15 min on the shared 2-core VM):
#                       bench/report.json, bench/report.md, bench/*.png, raw outputs in bench/raw/
#   make bench-quick    small counts, one short rate each, no synthesis or gateware simulation (under 2 min);
#                       CI runs the same through tests/actors/test_report.py
#
# Gateware figures come from other areas' targets when they exist: Fmax from the synthesis report of the
# matcher / ITCH decoder entries of HDL_REPORT_COMPONENTS (python -m hdl.report, as `make hdl-report`), cycles
# per message from `make bench-matcher` / `make bench-decoder` (lines with cycles_per_msg=N). Missing ones are
# reported "not available" with the reason. Extra options: BENCH_ARGS="--cluster-rates 2000,5000 ...".

BENCH_OUT ?= bench
BENCH_ARGS ?=

.PHONY: bench bench-quick

bench: setup
	$(PY) -m actors.report --out $(BENCH_OUT) --itch-sample $(ITCH_SAMPLE) $(BENCH_ARGS)

bench-quick: setup
	$(PY) -m actors.report --quick --out $(BENCH_OUT) --itch-sample $(ITCH_SAMPLE) $(BENCH_ARGS)

# CPU per order of each role's per-record work, the real actors in one thread (no hand-offs, no ZeroMQ):
# repeatable to a few percent, for judging changes to per-record code (docs/benchmarks.md).
.PHONY: bench-pipeline
bench-pipeline: setup
	$(PY) -m actors.bench_pipeline
