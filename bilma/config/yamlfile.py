"""YAML as config, grid and profile files are read: safe, and a key given twice is an error;
and the one `suggest()` behind every "did you mean ...?" of their errors."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import yaml

# Values a document may expand to once its aliases are followed. A config has ~100, a big
# grid a few thousand; a "billion laughs" alias bomb in 9 short lines expands to 10^9 and
# would hang whatever walks it (validation, an error message, json.dumps).
MAX_YAML_VALUES = 100_000


class UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last one
    silently) and a document whose aliases expand past `MAX_YAML_VALUES` values. Config, grid
    and profile files are all read with it."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                dup = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: let SafeLoader report it
                continue
            if dup:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
        return super().construct_mapping(node, deep=deep)


def _check_expansion(root: yaml.Node) -> None:
    """Raise a ConstructorError at the first node whose expanded size passes the bound.

    Sizes are memoised per node object, so an alias (the same node reached again) costs one
    lookup: the walk is linear in the text, whatever the expansion."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative: a deeply nested document must not hit Python's recursion limit
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        else:
            sizes[id(node)] = 1
            continue
        if not children_done:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
            continue
        size = 1 + sum(sizes[id(c)] for c in children)
        if size > MAX_YAML_VALUES:
            raise yaml.constructor.ConstructorError(
                None,
                None,
                f"aliases (*name) expand to more than {MAX_YAML_VALUES:,} values; write the "
                "values out, or use fewer nested aliases",
                node.start_mark,
            )
        sizes[id(node)] = size


def safe_load_unique(text: str) -> Any:
    """`yaml.safe_load`, refusing a key given twice and an alias bomb (raises yaml.YAMLError
    with its line)."""
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except RecursionError:  # `[[[[...` thousands deep: the composer recurses per level
        raise yaml.YAMLError("nested too deeply (thousands of levels)") from None


def yaml_error(e: yaml.YAMLError) -> str:
    """':' + ' line N' (when known) + ': invalid YAML: <problem>', to follow a file name."""
    mark = getattr(e, "problem_mark", None)
    line = f" line {mark.line + 1}:" if mark is not None else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f":{line} invalid YAML: {problem}"


def suggest(word: Any, candidates: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The nearest candidate to a misspelt key, name or choice, or None.

    A dotted key whose last part is right but whose section is not (`train.mask_ratio`) finds
    the one candidate with that last part."""
    word, candidates = str(word), [str(c) for c in candidates]
    hits = difflib.get_close_matches(word, candidates, n=1, cutoff=cutoff)
    if hits:
        return hits[0]
    leaf = word.rsplit(".", 1)[-1]
    by_leaf = [c for c in candidates if "." in c and c.rsplit(".", 1)[-1] == leaf]
    return by_leaf[0] if len(by_leaf) == 1 else None


def did_you_mean(
    word: Any, candidates: Iterable[str], otherwise: str = "", cutoff: float = 0.6
) -> str:
    """ "did you mean 'x'?" for the nearest candidate, else `otherwise`."""
    hint = suggest(word, candidates, cutoff)
    return f"did you mean '{hint}'?" if hint else otherwise
