"""A/B tests: per-variant conversion and revenue, lift, significance and sample-ratio checks."""

from dagster import Definitions

from kpi_pipelines.experiments.assets import experiment_results_asset

defs = Definitions(assets=[experiment_results_asset])
