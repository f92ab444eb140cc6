"""Gateware (the base SoC, the user slot) and real-lab drivers."""
