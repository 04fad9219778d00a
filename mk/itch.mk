# ITCH 5.0 decoder gateware (docs/itch-hdl.md). Included by the top-level Makefile.
#
#   make bench-itch-hdl       the whole sample file through the gateware on Icarus and Verilator (or
#                             ITCH_HDL_SIMULATOR=icarus|verilator): every record checked against the
#                             software decoder; prints bytes/cycle and latency
#   make bench-decoder        the same on Verilator only (what make bench's gateware section runs)
#   make test-itch-hdl        the decoder's tests only (amaranth.sim, and cocotb on both simulators)
#   make report-itch-hdl      its synthesis report at the 156.25 MHz target (make hdl-report: 100 MHz)
#   make test-itch-card       the ITCH decoder card's tests (amaranth.sim, host, cocotb over TCP)
#   make report-itch-card     the decoder card's synthesis report on the iCESugar-Pro's LFE5U-25F at the boards' 30 MHz
#   make bench-itch-card      the decoder card's speed behind a FeedHandler (Verilator; sample file's first 1,000)
#   make itch-card-sim        serve the decoder card on a TCP port ([SIMULATOR=verilator|icarus] [PORT=0]);
#                             the feed handler reaches it with decoder = "card", link = "socket://..."

# The wrapper folds the 528-bit record through registers so the harness's XOR tree is not the
# critical path (hdl/itch_report.py); the decoder inside is hdl.itch:ItchDecoder with its defaults.
HDL_REPORT_COMPONENTS += hdl.itch_report:ItchDecoderReport
ITCH_HDL_SIMULATOR ?= both

.PHONY: bench-itch-hdl bench-decoder test-itch-hdl report-itch-hdl test-itch-card itch-card-sim bench-itch-card report-itch-card

bench-itch-hdl: setup
	$(PY) -m sim.itch_backend $(ITCH_SAMPLE) --simulator $(ITCH_HDL_SIMULATOR)

bench-decoder: setup
	$(PY) -m sim.itch_backend $(ITCH_SAMPLE) --simulator verilator

test-itch-hdl: setup
	$(PY) -m pytest -q tests/hdl/test_itch_record.py tests/hdl/test_itch_amaranth.py tests/sim/test_itch.py \
	  tests/sim/test_itch_cli.py

report-itch-hdl: setup
	$(PY) -m hdl.report hdl.itch_report:ItchDecoderReport --device $(HDL_REPORT_DEVICE) \
	  --package $(HDL_REPORT_PACKAGE) --clock-mhz 156.25 $(HDL_REPORT_ARGS)

test-itch-card: setup
	$(PY) -m pytest -q tests/hdl/test_itch_card.py tests/host/test_itch_card.py tests/sim/test_itch_card.py

itch-card-sim: setup
	$(VENV)/bin/matchwire card sim --design itch --simulator $(SIMULATOR) --port $(PORT)

bench-itch-card: setup
	$(PY) -m sim.itch_card_bench --simulator verilator --messages 1000

report-itch-card: setup
	$(PY) -m hdl.report hdl.itch_card:ItchCard --device LFE5U-25F --package CABGA256 --clock-mhz 30 \
	  --out build/report/itch_card-25f $(HDL_REPORT_ARGS)
