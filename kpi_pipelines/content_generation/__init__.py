"""Content generation: review outcomes, generation errors and latency, time to review, by model."""

from dagster import Definitions

defs = Definitions(assets=[])
