"""Intent parsing: which anti-aesthetic dimensions a prompt asks for, and how strongly.

``base`` holds the types every parser returns and ``make_parser``; the parsers are ``lexicon`` (offline,
the default, built from the dimension catalogue), ``embedding`` (a sentence-embedding model) and ``llm``
(an OpenAI-compatible endpoint). ``evaluate`` scores a parser on the prompt stage's own pairs, whose
requested dimensions are known. The ``intent-aware`` scorer (``scorers/intent_aware.py``) reads them.
"""
