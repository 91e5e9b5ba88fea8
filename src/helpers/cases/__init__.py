"""One module per chapter: its prompt builder, its published numbers and its circuit.

The module's name is the chapter's slug: ``notebooks/NN_<slug>.ipynb`` tells the story,
``helpers/cases/<slug>.py`` holds what only that paper needs, ``tests/test_<slug>.py`` tests
it. Generic modules of :mod:`helpers` never import from here.
"""
