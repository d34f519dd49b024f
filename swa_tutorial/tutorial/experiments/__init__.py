"""Does the window work? Small models trained on a long-range task and on real text.

:mod:`.task` (the marked-token task, seeded, chance level 1 / V), :mod:`.reach` (the receptive
field a stack of windows predicts), :mod:`.model` (a small causal transformer whose attention
is :func:`swa_tutorial.sliding_window_attention`, optionally with a global token),
:mod:`.training` (train one configuration, measure its accuracy at a distance), :mod:`.sweep`
and :mod:`.text` (the commands that write ``book/data/receptive-field.json`` and
``book/data/window-text.json``) and :mod:`.figures` (the chapter's plots and tables from those
files). The chapter's exercise is checked with the book's others, in
``swa_tutorial.tutorial.exercises``.
"""
