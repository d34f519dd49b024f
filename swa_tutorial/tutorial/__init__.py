"""For the reader: the book's exercises (:mod:`.exercises`), its figures and explorers
(:mod:`.figures`, which need matplotlib), the memory-traffic counter (:mod:`.traffic`) and the
experiments that train small models on what a window can reach (:mod:`.experiments`)."""
