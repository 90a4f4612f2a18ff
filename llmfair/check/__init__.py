"""Checks that run before any model loads: recipe values, data, every audio header, the plan
(``llmfair check RECIPE``; ``train``, ``predict``, ``demo``, ``sweep`` and ``benchmark`` run them first)."""
from llmfair.check.headers import AudioHeader, ScanResult, scan_headers
from llmfair.check.preflight import CheckFailed, CheckReport, check_recipe, check_run
from llmfair.check.render import format_report

__all__ = ["AudioHeader", "CheckFailed", "CheckReport", "ScanResult", "check_recipe", "check_run", "format_report", "scan_headers"]
