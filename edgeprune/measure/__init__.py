"""Measurement: latency on this machine, on a remote device, or estimated from a roofline."""
