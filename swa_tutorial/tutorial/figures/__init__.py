"""The book's pictures: labelled matrices and bands (:mod:`.plotting`), the step-by-step explorers
with sliders (:mod:`.explorers`) and their kernel-free form for the static page
(:mod:`.static_explorer`), windows of every shape (:mod:`.window_figures`) and tiles
(:mod:`.tile_figures`). They need matplotlib and NumPy (the ``plot`` extra)."""
