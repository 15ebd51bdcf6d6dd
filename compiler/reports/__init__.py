"""Report writers: the Markdown, JSON and PNG files each command leaves next to its output."""
