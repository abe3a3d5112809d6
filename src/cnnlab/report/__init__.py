"""Reports: plots and HTML/Markdown rendering that read only run artifacts."""
