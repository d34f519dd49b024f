"""For the reader: the book's exercises (:mod:`.exercises`), its figures and explorers
(:mod:`.figures`, which need matplotlib) and the memory-traffic counter (:mod:`.traffic`)."""
