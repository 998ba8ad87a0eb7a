"""Captions: every caption names every described attribute of an identity.

Three template families (one long sentence, short sentences, a noun phrase) with varied
nouns and colour words; `describe` says which words name each attribute, for checks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from bilma.data.synth.attributes import Identity, choice

_COLOUR_WORDS: dict[str, tuple[str, ...]] = {
    "grey": ("grey", "gray"),
    "blonde": ("blonde", "blond"),
}
# Noun phrases with the colour slot; the head noun of each is what `describe` reports.
_UPPER_NPS = {
    "t-shirt": ("{c} t-shirt", "{c} tee", "{c} tee shirt"),
    "shirt": ("{c} long-sleeved shirt", "{c} shirt with long sleeves", "{c} long sleeve shirt"),
    "coat": ("{c} coat", "{c} jacket", "long {c} coat"),
    "dress": ("{c} dress", "{c} sleeveless dress"),
}
# Nouns that may stand alone as a sentence subject ("the tee is red").
_UPPER_NOUNS = {
    "t-shirt": ("t-shirt", "tee"),
    "shirt": ("long-sleeved shirt",),
    "coat": ("coat", "jacket"),
    "dress": ("dress",),
}
_LOWER_NOUNS = {"pants": ("pants", "trousers"), "shorts": ("shorts",), "skirt": ("skirt",)}
_SHOE_NOUNS = ("shoes", "sneakers", "boots")
_HAT_NOUNS = ("hat", "cap")
_BAG_NOUNS = {"backpack": ("backpack",), "handbag": ("handbag", "purse", "bag")}
_SUBJECTS = ("a person", "the pedestrian", "this person", "a pedestrian", "someone")
_TOKEN = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")


@dataclass(frozen=True)
class Mention:
    """How captions name one attribute: one of `colours` bound to one of `nouns`.

    Captions put the colour right before its noun ("a red tee", at most two words between,
    as in "red long-sleeved shirt") or say "<noun> is/are <colour>" ("the shoes are white").
    `extra` holds other words of the phrase that always appear (the hair length).
    """

    colours: tuple[str, ...]
    nouns: tuple[str, ...]
    extra: tuple[str, ...] = ()


def _words(colour: str) -> tuple[str, ...]:
    return _COLOUR_WORDS.get(colour, (colour,))


def describe(identity: Identity) -> dict[str, Mention]:
    """Every described attribute of `identity` with the words captions use for it."""
    ident = identity
    heads = {"t-shirt": ("t-shirt", "tee"), "shirt": ("shirt",), "coat": ("coat", "jacket")}
    out = {
        "upper": Mention(_words(ident.upper_colour), heads.get(ident.upper, ("dress",))),
        "hair": Mention(_words(ident.hair_colour), ("hair",), (ident.hair_length,)),
        "shoes": Mention(_words(ident.shoe_colour), _SHOE_NOUNS),
    }
    if ident.lower is not None and ident.lower_colour is not None:
        out["lower"] = Mention(_words(ident.lower_colour), _LOWER_NOUNS[ident.lower])
    if ident.bag is not None and ident.bag_colour is not None:
        out["bag"] = Mention(_words(ident.bag_colour), _BAG_NOUNS[ident.bag])
    if ident.hat_colour is not None:
        out["hat"] = Mention(_words(ident.hat_colour), _HAT_NOUNS)
    if ident.scarf_colour is not None:
        out["scarf"] = Mention(_words(ident.scarf_colour), ("scarf",))
    return out


def tokenize(caption: str) -> list[str]:
    """Lowercased word tokens (hyphenated words stay one token, punctuation is dropped)."""
    return _TOKEN.findall(caption.lower())


def _a(phrase: str) -> str:
    return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _phrases(ident: Identity, rng: np.random.Generator) -> dict[str, str]:
    """Noun phrases ("a red tee", "short black hair") of every described attribute."""

    def colour(name: str) -> str:
        return choice(rng, _words(name))

    out = {"upper": _a(choice(rng, _UPPER_NPS[ident.upper]).format(c=colour(ident.upper_colour)))}
    if ident.lower is not None and ident.lower_colour is not None:
        c = colour(ident.lower_colour)
        noun = choice(rng, _LOWER_NOUNS[ident.lower])
        out["lower"] = _a(f"{c} skirt") if noun == "skirt" else f"{c} {noun}"
    out["shoes"] = f"{colour(ident.shoe_colour)} {choice(rng, _SHOE_NOUNS)}"
    if ident.hat_colour is not None:
        out["hat"] = _a(f"{colour(ident.hat_colour)} {choice(rng, _HAT_NOUNS)}")
    if ident.scarf_colour is not None:
        out["scarf"] = _a(f"{colour(ident.scarf_colour)} scarf")
    out["hair"] = f"{ident.hair_length} {colour(ident.hair_colour)} hair"
    if ident.bag is not None and ident.bag_colour is not None:
        out["bag"] = _a(f"{colour(ident.bag_colour)} {choice(rng, _BAG_NOUNS[ident.bag])}")
    return out


def _long_sentence(ident: Identity, rng: np.random.Generator) -> str:
    p = _phrases(ident, rng)
    worn = [p[k] for k in ("upper", "lower", "shoes", "hat", "scarf") if k in p]
    worn = [worn[i] for i in rng.permutation(len(worn))]
    verb = choice(rng, ("is wearing", "wears", "is dressed in", "in"))
    # "A person in ..., and has ..." reads wrong: after "in" the hair takes "with".
    hair = "with {}" if verb == "in" else choice(rng, ("with {}", "and has {}"))
    clauses = [hair.format(p["hair"])]
    if "bag" in p:
        carry = "holding {}" if ident.bag == "handbag" and rng.random() < 0.5 else "carrying {}"
        clauses.append(carry.format(p["bag"]))
    clauses = [clauses[i] for i in rng.permutation(len(clauses))]
    text = f"{choice(rng, _SUBJECTS)} {verb} {_join(worn)}, {', '.join(clauses)}."
    return text[0].upper() + text[1:]


def _short_sentences(ident: Identity, rng: np.random.Generator) -> str:
    p = _phrases(ident, rng)

    def col(name: str) -> str:
        return choice(rng, _words(name))

    def act(they_verb: str, one_verb: str, obj: str) -> str:
        if rng.random() < 0.5:
            return f"they {they_verb} {obj}"
        return f"{choice(rng, ('the person', 'this pedestrian'))} {one_verb} {obj}"

    # Per attribute: an active sentence with the noun phrase, or "<noun> is <colour>".
    forms = [
        (
            act("wear", "wears", p["upper"]),
            f"the {choice(rng, _UPPER_NOUNS[ident.upper])} is {col(ident.upper_colour)}",
        ),
        (
            act("have", "has", p["hair"]),
            f"the {ident.hair_length} hair is {col(ident.hair_colour)}",
        ),
        (
            act("wear", "wears", p["shoes"]),
            f"the {choice(rng, _SHOE_NOUNS)} are {col(ident.shoe_colour)}",
        ),
    ]
    if ident.lower is not None and ident.lower_colour is not None:
        noun = choice(rng, _LOWER_NOUNS[ident.lower])
        be = "is" if noun == "skirt" else "are"
        forms.append(
            (act("wear", "wears", p["lower"]), f"the {noun} {be} {col(ident.lower_colour)}")
        )
    if ident.hat_colour is not None:
        noun = choice(rng, _HAT_NOUNS)
        forms.append((f"{p['hat']} is on the head", f"the {noun} is {col(ident.hat_colour)}"))
    if ident.scarf_colour is not None:
        forms.append(
            (f"{p['scarf']} is around the neck", f"the scarf is {col(ident.scarf_colour)}")
        )
    if ident.bag is not None and ident.bag_colour is not None:
        where = "on the back" if ident.bag == "backpack" else "in one hand"
        forms.append((act("carry", "carries", p["bag"]), f"{p['bag']} is {where}"))
    out = [f[int(rng.integers(2))] for f in forms]
    out = [out[i] for i in rng.permutation(len(out))]
    if rng.random() < 0.5:
        intro = ("a person is walking", "this is a pedestrian", "someone walks by")
        out.insert(0, choice(rng, intro))
    return " ".join(s[0].upper() + s[1:] + "." for s in out)


def _noun_phrase(ident: Identity, rng: np.random.Generator) -> str:
    p = _phrases(ident, rng)
    worn = [p[k] for k in ("upper", "lower", "shoes", "hat", "scarf") if k in p]
    worn = [worn[i] for i in rng.permutation(len(worn))]
    carried = [p["hair"]] + ([p["bag"]] if "bag" in p else [])
    if rng.random() < 0.5:
        text = f"{choice(rng, _SUBJECTS)} in {_join(worn)}, with {_join(carried)}"
    else:
        items = worn + carried
        text = ", ".join(items[i] for i in rng.permutation(len(items)))
    return text[0].upper() + text[1:] + "."


def captions_for(identity: Identity, rng: np.random.Generator, n: int = 2) -> list[str]:
    """`n` captions of `identity`, each from a randomly chosen template family."""
    families = (_long_sentence, _short_sentences, _noun_phrase)
    return [families[int(rng.integers(3))](identity, rng) for _ in range(n)]
