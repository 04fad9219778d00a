# Gateware infrastructure targets (docs/hdl-infra.md). Included by the top-level Makefile, which
# exports VERILATOR_ROOT, PATH and the YoWASP tool variables (YOSYS, NEXTPNR_ECP5, ...).
#
#   make hdl-report     synthesise each component standalone for ECP5 and print Fmax/resources
#   make hdl-test       the gateware tests only (amaranth.sim, and cocotb on Icarus + Verilator)
#
# Areas add their blocks from their own mk/<area>.mk (any order):
#   HDL_REPORT_COMPONENTS += hdl.matcher:Matcher 'hdl.itch:Decoder(lanes=2)'

HDL_REPORT_DEVICE ?= LFE5U-85F
HDL_REPORT_PACKAGE ?= CABGA381
HDL_REPORT_CLOCK_MHZ ?= 100
HDL_REPORT_ARGS ?=
HDL_REPORT_COMPONENTS += hdl.link:FrameDecoder hdl.link:FrameEncoder

.PHONY: hdl-report hdl-test

hdl-report: setup
	@set -e; for component in $(HDL_REPORT_COMPONENTS); do \
	  $(PY) -m hdl.report "$$component" --device $(HDL_REPORT_DEVICE) --package $(HDL_REPORT_PACKAGE) \
	    --clock-mhz $(HDL_REPORT_CLOCK_MHZ) $(HDL_REPORT_ARGS); \
	  echo; \
	done

hdl-test: setup
	$(PY) -m pytest -q tests/hdl tests/sim
