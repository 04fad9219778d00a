"""cocotb test modules (benches), run through :func:`sim.runner.run_cocotb` from tests/sim/."""
