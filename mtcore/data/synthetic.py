"""A deterministic English -> Hungarian toy corpus that a small model can learn to near-perfect BLEU.

Sentences follow one grammar, ``det adj* noun verb det adj* noun [adverb]``, and their translations
follow two real rules of Hungarian that a word-for-word copy cannot get right: the verb moves after
the object (SVO -> SOV) and the object takes the accusative form (``kutya`` -> ``kutyát``); the
article ``a`` becomes ``az`` before a vowel. The English side is grammatical too ("an old dog", "a
yellow egg"). Quality can thus be checked without downloading data.
"""

from __future__ import annotations

import numpy as np

# English: (nominative, accusative)
NOUNS = {
    "dog": ("kutya", "kutyát"), "cat": ("macska", "macskát"), "bird": ("madár", "madarat"),
    "house": ("ház", "házat"), "tree": ("fa", "fát"), "car": ("autó", "autót"), "book": ("könyv", "könyvet"),
    "apple": ("alma", "almát"), "boy": ("fiú", "fiút"), "girl": ("lány", "lányt"),
    "teacher": ("tanár", "tanárt"), "river": ("folyó", "folyót"), "egg": ("tojás", "tojást"),
    "window": ("ablak", "ablakot"),
}
ADJECTIVES = {"big": "nagy", "small": "kicsi", "red": "piros", "old": "öreg", "new": "új", "green": "zöld",
              "beautiful": "szép", "fast": "gyors", "yellow": "sárga", "quiet": "csendes"}
VERBS = {"sees": "lát", "loves": "szeret", "finds": "talál", "draws": "rajzol", "wants": "akar",
         "buys": "vesz", "hears": "hall", "knows": "ismer", "paints": "fest", "waits": "vár"}
ADVERBS = {"today": "ma", "now": "most", "again": "újra", "often": "gyakran", "yesterday": "tegnap"}
VOWELS = set("aáeéiíoóöőuúüű")


def _noun_phrase(rng: np.random.Generator, accusative: bool) -> tuple[list[str], list[str]]:
    definite = rng.random() < 0.5
    adjectives = list(rng.choice(list(ADJECTIVES), size=rng.integers(0, 3), replace=False))
    noun = str(rng.choice(list(NOUNS)))
    first = (adjectives or [noun])[0]
    # English too agrees with the sound that follows: "an old dog", "an egg", "a yellow apple" (every
    # word here is pronounced as it is spelled at its start).
    en = ["the" if definite else ("an" if first[0] in "aeiou" else "a"), *adjectives, noun]
    hu_words = [ADJECTIVES[a] for a in adjectives] + [NOUNS[noun][1 if accusative else 0]]
    article = ("az" if hu_words[0][0] in VOWELS else "a") if definite else "egy"
    return en, [article, *hu_words]


def synthetic_pair(rng: np.random.Generator) -> tuple[str, str]:
    subject_en, subject_hu = _noun_phrase(rng, accusative=False)
    object_en, object_hu = _noun_phrase(rng, accusative=True)
    verb = str(rng.choice(list(VERBS)))
    adverb = [str(rng.choice(list(ADVERBS)))] if rng.random() < 0.3 else []
    en = [*subject_en, verb, *object_en, *adverb]
    hu = [*subject_hu, *object_hu, VERBS[verb], *(ADVERBS[a] for a in adverb)]
    return " ".join(en), " ".join(hu)


def synthetic_pairs(size: int = 4000, seed: int = 0) -> dict[str, str]:
    """``size`` distinct pairs, English -> Hungarian, the same for the same seed on every machine
    (``mtcore.data.corpus.synthetic_corpus`` makes them a Corpus)."""
    rng = np.random.default_rng(seed)
    pairs: dict[str, str] = {}
    while len(pairs) < size:
        en, hu = synthetic_pair(rng)
        pairs.setdefault(en, hu)
    return pairs
