"""The live Streamlit dashboard over the store (``cryptostream dashboard``).

Modules, one job each: ``data`` reads the store (DuckDB through ``cryptostream.query``, or
PostgreSQL) incrementally; ``snapshot`` decides what one refresh reads; ``metrics`` turns
frames into the numbers shown (KPIs, skill, source status); ``charts`` builds the plotly
figures; ``app`` is the Streamlit script (sidebar, header KPIs, tab routing) and the
``views_*`` modules render the tabs; ``server`` starts Streamlit for the CLI.
"""

from pathlib import Path

#: the Streamlit script ``cryptostream dashboard`` runs
APP_PATH = Path(__file__).with_name("app.py")
