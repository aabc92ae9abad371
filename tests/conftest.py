"""Shared test configuration: the process-leak checker is available to every tier."""

pytest_plugins = ["tests.helpers.procwatch"]
