"""What only the lessons use: lesson helpers, widgets, JupyterLab and the lessons' figures."""
