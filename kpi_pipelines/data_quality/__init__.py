"""Catalog data quality: completeness, normalization and quality scores."""

from dagster import Definitions

defs = Definitions(assets=[])
