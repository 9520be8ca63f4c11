"""Human perceptual study (paper Sec. 5.1, docs/facts.md §6): pairwise A/B "which image is more
realistic?" experiments, unlimited-time (Table 1) and time-limited (Fig. 3).

``make`` builds a study folder from the synthesized validation sets; the web app (``server``) and
the MTurk round trip (``mturk``) collect answers as canonical records (``records``); ``analyze``
excludes inattentive participants by their sentinel answers and writes the judgments that the
``evaluate`` and ``report`` stages pick up. ``observer`` simulates participants; ``power`` plans.
"""
