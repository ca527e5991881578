"""Thin pipeline stages: each module is a DVC stage entry point (`python -m pipelines.<stage>`) and a
Prefect flow over plain functions from `lewm`."""
