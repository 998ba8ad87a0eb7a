"""Checking a synthetic caption against the attributes it should name."""

from __future__ import annotations

from bilma.data.synth import Mention

# Words allowed between a colour and its noun ("red long-sleeved shirt", "long sleeve shirt").
_BETWEEN = {"long-sleeved", "long", "sleeve", "sleeveless"}


def names(tokens: list[str], m: Mention) -> bool:
    """Whether `tokens` bind one of the mention's colours to one of its nouns."""
    for j, tok in enumerate(tokens):
        if tok not in m.nouns or not all(x in tokens[max(0, j - 3) : j] for x in m.extra):
            continue
        after = tokens[j + 1 : j + 3]
        if len(after) == 2 and after[0] in ("is", "are") and after[1] in m.colours:
            return True
        for i in range(j - 1, max(-1, j - 4), -1):
            if tokens[i] in m.colours:
                return True
            if tokens[i] not in _BETWEEN:
                break
    return False
