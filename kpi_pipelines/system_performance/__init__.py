"""System performance: latency percentiles and error rates by endpoint."""

from dagster import Definitions

defs = Definitions(assets=[])
