# The card: FPGA bitstreams, programming, the simulated card and its tests (docs/card.md). Included by
# the top-level Makefile, which exports the YoWASP tool variables (YOSYS, NEXTPNR_ECP5, ECPPACK,
# NEXTPNR_ICE40, ICEPACK), keeps YoWASP's cache in build/ (YOWASP_CACHE_DIR, XDG_CACHE_HOME) and sets
# OPENFPGALOADER=true (so nothing is programmed by accident: pass OPENFPGALOADER=openFPGALoader).
#
#   make bitstream BOARD=ulx3s-85f     build/ulx3s-85f/matchwire_card.bit, nextpnr's report
#                                      (matchwire_card-nextpnr.json), timing.txt, utilisation.txt,
#                                      report.json; fails when a clock misses its target
#   make bitstream BOARD=icesugar-pro  build/icesugar-pro/matchwire_card.bit (ECP5-25F, medium matcher,
#                                      115200 baud: open it as /dev/ttyACM0?baud=115200)
#   make bitstream BOARD=ecp5-5g-evn   build/ecp5-5g-evn/matchwire_card.bit (ECP5-5G LFE5UM5G-85F-8, the
#                                      part on which the matcher and the ITCH decoder meet their Fmax targets)
#   make bitstream BOARD=ulx3s-85f DESIGN=itch
#                                      the ITCH decoder card instead: build/ulx3s-85f-itch/matchwire_itch_card.bit
#   make bitstreams                    every board (matcher card)
#   make program BOARD=ulx3s-85f OPENFPGALOADER=openFPGALoader [FLASH=1] [DESIGN=itch]
#   make card-sim [SIMULATOR=verilator|icarus] [PORT=0] [MATCHER=default|medium|small]
#   make card-test                     the card's tests (bitstream build included)
#
# Options: BAUD (UART; default: the board's; open the board as /dev/ttyUSB0?baud=N when changed), SEED
# (nextpnr placement seed), FORCE=1 (rebuild even when nothing changed).

BOARD ?= ulx3s-85f
CARD_BOARDS := ulx3s-85f icesugar-pro ecp5-5g-evn
BAUD ?=
SEED ?= 1
DESIGN ?= matcher
SIMULATOR ?= verilator
PORT ?= 0
MATCHER ?= default

.PHONY: bitstream bitstreams program card-sim card-test

bitstream: setup
	$(PY) -m hdl.boards build $(BOARD) $(if $(BAUD),--baud $(BAUD)) --seed $(SEED) --design $(DESIGN) $(if $(FORCE),--force)

bitstreams: setup
	@set -e; for board in $(CARD_BOARDS); do $(PY) -m hdl.boards build $$board $(if $(BAUD),--baud $(BAUD)) --seed $(SEED); done

program: bitstream
	$(PY) -m hdl.boards program $(BOARD) --design $(DESIGN) $(if $(FLASH),--flash)

card-sim: setup
	$(VENV)/bin/matchwire card sim --simulator $(SIMULATOR) --port $(PORT) --matcher $(MATCHER)

card-test: setup
	$(PY) -m pytest -q tests/hdl/test_card.py tests/hdl/test_card_bitstream.py tests/host/test_card.py \
	  tests/sim/test_card.py tests/actors/test_card_cluster.py
