"""Business impact: conversion, order value, revenue, retention, lifetime value."""

from dagster import Definitions

defs = Definitions(assets=[])
