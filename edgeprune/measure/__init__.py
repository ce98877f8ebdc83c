"""Measurement: latency on this machine, on a remote device, or estimated from a roofline."""

from edgeprune.measure.protocol import LatencyStats, time_callable, time_side_by_side

__all__ = ["LatencyStats", "time_callable", "time_side_by_side"]
