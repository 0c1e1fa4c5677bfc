"""The run's report: tidy tables from stage metrics, figures, the paper's numbers, the HTML page."""
