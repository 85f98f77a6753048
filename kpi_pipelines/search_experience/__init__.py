"""Search experience: click-through, no-results, success, click position, time to first click, refinements, satisfaction, engagement."""

from dagster import Definitions

defs = Definitions(assets=[])
