"""HTML reports and tables that compare runs."""
