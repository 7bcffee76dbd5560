"""Benchmarks of webrtc-cast (see docs/benchmarks.md). Each prints one JSON object and a one-line summary."""
