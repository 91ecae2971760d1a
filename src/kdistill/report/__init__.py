"""The report card: markdown, html and plots from eval/results.json; label and generation sections."""
