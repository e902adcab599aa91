# Sphinx configuration of the book (scripts/build_book.py copies this folder into a temporary
# source tree next to the executed notebooks and runs sphinx-build there).  MyST-NB renders the
# notebooks as they ran (no execution), with the theme Jupyter Book uses.  Everything a page loads
# is in the built site: MathJax comes from docs/vendor/ (npm, see LICENSES.md there), not a CDN.
project = "pluralign"
author = "the pluralign authors"
copyright = "the pluralign authors"  # no year: the same results must give the same bytes

extensions = ["myst_nb"]
exclude_patterns = ["_readme.md", "**/.ipynb_checkpoints"]

nb_execution_mode = "off"  # the notebooks ran in the pipeline; the book only shows them
nb_output_stderr = "show"
# MyST-NB would load @jupyter-widgets from a CDN on a page whose notebook holds widget state;
# build_book.py turns widget outputs (tqdm bars) into text, and no widget script is ever loaded.
nb_ipywidgets_js = {}
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

html_theme = "sphinx_book_theme"
html_title = "pluralign"
html_static_path = ["_static"]
mathjax_path = "mathjax/tex-svg-full.js"  # relative to _static/
html_copy_source = False  # the executed notebooks are DVC outputs; no second copy in the site
html_show_sourcelink = False
html_context = {"default_mode": "light"}  # the figures are drawn on white; also: no theme-mode console error
html_theme_options = {
    "use_download_button": False,
    "use_fullscreen_button": False,
    "home_page_in_toc": True,
    "show_toc_level": 2,
}
