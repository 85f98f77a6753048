"""Business impact: conversion, order value, revenue, retention, lifetime value."""

from dagster import Definitions

from kpi_pipelines.business.assets import business_metrics

defs = Definitions(assets=[business_metrics])
