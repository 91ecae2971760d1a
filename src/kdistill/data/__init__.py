"""Task data: read and validate a source, then deduplicate, sample and split it without leaks."""

from kdistill.data.loaders import load_examples
from kdistill.data.prepare import PreparedData, format_report, prepare_data
from kdistill.data.records import Example

__all__ = ["Example", "PreparedData", "format_report", "load_examples", "prepare_data"]
