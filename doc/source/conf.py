"""Sphinx configuration of the spawnflow documentation (``make docs``).

The build runs with warnings as errors. Three parts are generated from the
code at build time, so they cannot drift from it: the build lifecycle table
and the step table (``_ext/spawnflow_docs.py``), the configuration reference
(``oslo_config.sphinxext``) and the command line reference
(``cliff.sphinxext``).
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "_ext"))

project = "spawnflow"
copyright = "spawnflow contributors"
author = "spawnflow contributors"
release = "0.1.0"

extensions = [
    "oslo_config.sphinxext",
    "cliff.sphinxext",
    "spawnflow_docs",
]

# The option tables of cliff's directive show --help on every command otherwise.
autoprogram_cliff_ignored = ["--help"]

root_doc = "index"
exclude_patterns = []
templates_path = []
html_static_path = []
html_theme = "alabaster"
html_title = "spawnflow"
