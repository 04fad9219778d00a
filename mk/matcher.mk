# The gateware matcher (issue #4; docs/matcher.md). Included by the top-level Makefile, which
# exports VERILATOR_ROOT, PATH and the YoWASP tool variables.
#
#   make matcher-test     the matcher's tests only (amaranth.sim, host driver, cocotb on both simulators)
#   make diff-million     a million random commands through gateware and reference engine (Verilator)
#   make bench-matcher    cycle figures: a realistic stream and the directed scenarios (Verilator)
#   make matcher-report   synthesis of the default matcher for ECP5-85F: Fmax, LUTs, FFs, block RAM

MATCHER_DIFF_COMMANDS ?= 1000000
MATCHER_SIMULATOR ?= verilator
HDL_REPORT_COMPONENTS += hdl.matcher:default_matcher

.PHONY: matcher-test diff-million bench-matcher matcher-report

matcher-test: setup
	$(PY) -m pytest -q tests/hdl/test_matcher.py tests/host/test_matcher_driver.py tests/sim/test_matcher.py \
	  tests/sim/test_matcher_cli.py

diff-million: setup
	$(PY) -m sim.matcher_backend diff --commands $(MATCHER_DIFF_COMMANDS) --simulator $(MATCHER_SIMULATOR)

bench-matcher: setup
	$(PY) -m sim.matcher_backend bench --simulator $(MATCHER_SIMULATOR)

matcher-report: setup
	$(PY) -m hdl.report hdl.matcher:default_matcher --device $(HDL_REPORT_DEVICE) --package $(HDL_REPORT_PACKAGE) \
	  --clock-mhz $(HDL_REPORT_CLOCK_MHZ) $(HDL_REPORT_ARGS)
