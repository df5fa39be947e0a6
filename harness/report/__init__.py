"""The gate's report: report.json built from the run and written atomically with the rest (build), its Markdown
(markdown), its SVG chart (chart), and the folder of the other commands' reports (folder)."""
