"""Deterministic synthetic AutoDescribe traffic for demos, tests and benchmarks."""

from kpi_pipelines.synthetic.generator import GeneratedTraffic, generate

__all__ = ["GeneratedTraffic", "generate"]
