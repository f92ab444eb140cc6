"""Simulated silicon: Verilator builds and cocotb board processes (the sim backend)."""
