"""The report's file names, and the error for a directory that holds no study."""

REPORT_FILE = "report.md"
WHY_FILE = "why.md"  # the "Why" section, written by `python -m tuner.explain`
WHY_JSON = "why.json"
FRONTIER_CSV = "frontier.csv"
FRONTIER_JSON = "frontier.json"
FIGURES_DIR = "figures"


class NotAStudy(Exception):
    """The directory holds no study.json."""
