"""Every file the documentation points at exists: README.md and docs/*.md.

Two kinds of reference are checked.

1. **Links** `[text](target)` and `![alt](target)` without a URL scheme: the target, resolved
   against the folder of the Markdown file (as GitHub does), exists in the checkout; an
   `#anchor` into a Markdown file names one of its headings (GitHub's slugs).
2. **Paths in code**: inline code spans, fenced code blocks and indented code blocks are split
   into words (at white space, `=`, `,`, `;`, quotes and brackets); a word is *path-like* when
   it holds a `/` or ends in a file extension (`EXTENSIONS`). Each path-like word is resolved
   against the repository root (the README's commands run there) and must exist, by these
   rules, in this order:

   - URLs and URIs (`http://...`, `sqlite:///mlflow.db`), absolute paths and words with a
     shell expansion (`/shared/$USER/mlflow`, `$(cat ...)`) are not in the repository: skipped.
   - `<placeholder>` and `*` are wildcards: the path is checked as a glob and must match at
     least one file (`bilma/parse/maps/<set>.json`, `sweeps/grids/*.yaml`). A path whose first
     part is a placeholder (`<data.root>/parsing/...`) lies outside the repository: skipped.
   - Created at run time, never part of a clone: paths that `.gitignore` ignores (`runs/`,
     `tables/`, `data/`, `artifacts/`, `.venv/`, `mlflow.db`, ...; asked of `git
     check-ignore`), and the folders the reader fills (`READER_FOLDERS`: `datasets/` and
     `pretrained/`, where README "Datasets" puts the datasets and the weights, which the real
     presets read as `data.root` and `model.pretrained`).
   - Relative to a trial directory or a dataset folder, not to the repository (`INSIDE`):
     `ckpt/...`, `logs/...`, `imgs/...`, `parsing/...`.
   - A name without a folder (`smoke.yaml`, `show_retrievals.py`, `config/`) is the name of a
     file or folder the sentence around it places (a grid, a script in the folder just named,
     a subpackage): some tracked file or folder of that name must exist somewhere in the
     repository, unless it is a name of the run record (`bilma.runs.schema`), an annotation
     file of a dataset (`bilma.data.formats`) or a file of a CLIP weights folder
     (`CLIP_FOLDER`), which live outside the repository.
   - Two parts without an extension whose first part is no folder of the repository are a
     Hugging Face or GitHub name (`openai/clip-vit-base-patch16`) or a ratio (`I/N`): skipped.
   - Everything else must exist. `file.py::test_name` also needs `def test_name` in the file.

   Code spans inside the text of a link to another site (`[`model/build.py`](https://...)`)
   name that site's files and are judged by the link: skipped.
"""

from __future__ import annotations

import glob
import re
import subprocess
from functools import cache
from pathlib import Path, PurePosixPath

import pytest
from support.paths import REPO

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

EXTENSIONS = (
    ".py", ".yaml", ".yml", ".md", ".sh", ".json", ".jsonl", ".toml", ".txt", ".sbatch",
    ".png", ".cff", ".pt", ".db", ".cfg", ".csv", ".tex", ".err", ".out", ".pkl",
)  # fmt: skip
READER_FOLDERS = ("datasets", "pretrained")
INSIDE = ("ckpt", "logs", "imgs", "parsing")
CLIP_FOLDER = ("config.json", "model.safetensors", "vocab.json", "merges.txt",
               "tokenizer.json", "tokenizer_config.json")  # fmt: skip

LINK = re.compile(r"!?\[((?:[^\[\]]|\[[^\]]*\])*)\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
FENCE = re.compile(r"^\s{0,3}(```|~~~)")
SPAN = re.compile(r"(`+)(.+?)\1")
SPLIT = re.compile(r"[\s=,;()\[\]{}\"'|]+")


@cache
def tracked() -> tuple[frozenset[str], frozenset[str]]:
    """The repository's files (tracked, plus untracked ones git does not ignore) and folders."""
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    files = frozenset(f for f in out if (REPO / f).exists())
    dirs = frozenset(str(p) for f in files for p in PurePosixPath(f).parents if str(p) != ".")
    return files, dirs


def exists(rel: str) -> bool:
    """`rel` (relative to the repository root) is a file or folder of the repository."""
    files, dirs = tracked()
    rel = rel.rstrip("/")
    return rel in files or rel in dirs or (REPO / rel).exists()


@cache
def ignored(path: str) -> bool:
    """Whether .gitignore ignores `path` (a file or folder created at run time)."""
    check = ["git", "check-ignore", "-q", "--no-index", path]
    return subprocess.run(check, cwd=REPO).returncode == 0


@cache
def basenames() -> frozenset[str]:
    files, dirs = tracked()
    return frozenset(PurePosixPath(p).name for p in files | dirs)


@cache
def outside_names() -> frozenset[str]:
    """File names the documentation uses for things outside the repository."""
    from bilma.data import formats
    from bilma.runs import schema

    record = {v for k, v in vars(schema).items() if k.isupper() and isinstance(v, str)}
    annotations = {n for fmt in formats._FORMATS.values() for n in fmt.filenames}
    return frozenset({*record, *annotations, *CLIP_FOLDER})


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"`|\*\*|__|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of a Markdown text's headings."""
    seen: dict[str, int] = {}
    out = set()
    in_fence = False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
        m = None if in_fence else re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            out.add(s if n == 0 else f"{s}-{n}")
    return out


def code_lines(text: str) -> list[tuple[int, str, bool]]:
    """(line number, text, whole line is code) for every line of `text`, code blocks marked."""
    out = []
    in_fence = False
    prev_blank = True
    in_indented = False
    for no, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            in_fence = not in_fence
            out.append((no, "", False))
            prev_blank = False
            continue
        if in_fence:
            out.append((no, line, True))
            continue
        indented = line.startswith("    ") and line.strip() != ""
        in_indented = indented and (prev_blank or in_indented)
        out.append((no, line, in_indented))
        blank = line.strip() == ""
        if not blank and not indented:
            in_indented = False
        prev_blank = blank
    return out


def code_words(text: str) -> list[tuple[int, str]]:
    """(line number, word) for every word in code (spans and blocks) of a Markdown text."""
    out = []
    for no, line, is_code in code_lines(text):
        if is_code:
            chunks = [line]
        else:
            # Spans inside a link to another site name that site's files.
            local = LINK.sub(lambda m: "" if SCHEME.match(m.group(2)) else m.group(0), line)
            chunks = [m.group(2) for m in SPAN.finditer(local)]
        for chunk in chunks:
            chunk = re.sub(r"<[^<>]*>", "*", chunk)  # placeholders, which may hold spaces
            out += [(no, w) for w in SPLIT.split(chunk) if w]
    return out


def path_like(word: str) -> bool:
    word = word.rstrip(".:")
    return "/" in word or word.lower().endswith(EXTENSIONS)


def check_word(word: str) -> str | None:
    """Why `word` (path-like) is a broken reference; None if it exists or is excluded."""
    word = word.rstrip(".:")
    path, _, node = word.partition("::")
    if "://" in word or SCHEME.match(word) and not re.match(r"^[A-Za-z]:[\\/]", word):
        return None  # a URL or URI
    if path.startswith(("/", "~", "-")) or "$" in path:
        return None  # absolute, in the reader's home, an option, or a shell expansion
    path = path.removeprefix("./")
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] == "*":
        return None  # `<data.root>/parsing/...`: under a folder the reader chooses
    if parts[0] in READER_FOLDERS or parts[0] in INSIDE or ignored(path):
        return None
    if "*" in path:
        return None if glob.glob(path, root_dir=REPO) else "matches no file"
    if len(parts) == 1:
        name = parts[0]
        if name in basenames() or name in outside_names() or exists(name):
            return None
        return "names no file or folder of the repository"
    files, dirs = tracked()
    top = {PurePosixPath(p).parts[0] for p in files}
    if len(parts) == 2 and parts[0] not in top and "." not in parts[1]:
        return None  # a Hugging Face / GitHub name or a ratio
    if not exists(path):
        return "does not exist"
    if node:
        source = (REPO / path).read_text(encoding="utf-8")
        if not re.search(rf"^\s*(async\s+)?def {re.escape(node.split('[')[0])}\(", source, re.M):
            return f"has no `def {node}`"
    return None


def broken_references(md: Path, text: str | None = None) -> list[str]:
    """Every broken reference of one Markdown file, as 'file:line: reference (why)'."""
    text = md.read_text(encoding="utf-8") if text is None else text
    where = md.relative_to(REPO)
    out = []
    for no, line, is_code in code_lines(text):
        if is_code:
            continue
        plain = SPAN.sub(lambda s: " " * len(s.group(0)), line)  # no links inside code spans
        for m in LINK.finditer(plain):
            target = m.group(2)
            if SCHEME.match(target):
                continue
            file, _, anchor = target.partition("#")
            dest = (md.parent / file).resolve() if file else md
            if file and not dest.exists():
                out.append(f"{where}:{no}: link ({target}) does not exist")
            elif anchor and dest.suffix == ".md":
                heads = anchors(dest.read_text(encoding="utf-8") if file else text)
                if anchor not in heads:
                    out.append(f"{where}:{no}: link ({target}) names no heading of {dest.name}")
    for no, word in code_words(text):
        if path_like(word):
            why = check_word(word)
            if why:
                out.append(f"{where}:{no}: `{word}` {why}")
    return out


@pytest.mark.parametrize("md", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_every_reference_exists(md):
    broken = broken_references(md)
    assert not broken, f"{len(broken)} broken reference(s):\n" + "\n".join(broken)


# The rules themselves, on made-up text: what is checked and what is excluded.


def refs(text: str) -> list[str]:
    """The broken references of `text`, as if it were a file in docs/ (never written)."""
    return broken_references(REPO / "docs" / "made-up.md", text)


def test_a_missing_path_in_code_or_a_link_is_caught():
    text = (
        "Run `python sweeps/launcher.py` with `configs/nope.yaml`.\n"
        "See [the grid](../sweeps/grids/nope.yaml) and [arch](architecture.md#no-such-heading).\n"
        "```bash\npython analysis/old_tables.py --out tables\n```\n"
        "`tests/model/test_model.py::test_that_does_not_exist` and `sweeps/grids/*.nope`.\n"
    )
    found = "\n".join(refs(text))
    for ref in ("sweeps/launcher.py", "configs/nope.yaml", "../sweeps/grids/nope.yaml",
                "architecture.md#no-such-heading", "analysis/old_tables.py",
                "test_that_does_not_exist", "sweeps/grids/*.nope"):  # fmt: skip
        assert ref in found, (ref, found)


def test_reader_folders_are_where_the_real_presets_read():
    import yaml

    read = set()
    for cfg in (REPO / "configs").glob("*.yaml"):
        tree = yaml.safe_load(cfg.read_text(encoding="utf-8")) or {}
        for section, key in (("data", "root"), ("model", "pretrained")):
            value = (tree.get(section) or {}).get(key)
            if value:
                read.add(PurePosixPath(value).parts[0])
    assert set(READER_FOLDERS) <= read
    assert all(ignored(f"{folder}/x") for folder in read - set(READER_FOLDERS))


def test_existing_runtime_and_outside_paths_pass():
    text = (
        "`configs/cuhk_pedes.yaml`, `sweeps/grids/ablation.yaml`, `cluster/dev-slurm.sh`,\n"
        "`analysis/make_tables.py`, [arch](architecture.md#the-run-record), `smoke.yaml`,\n"
        "`runs/<study>/<trial_id>/ckpt/best.pt`, `tables/x.png`, `mlflow.db`, `data/synth`,\n"
        "`<data.root>/parsing/<labelset>/<image path>.png`, `bilma/parse/maps/<set>.json`,\n"
        "`openai/clip-vit-base-patch16`, `sqlite:///mlflow.db`, `/shared/$USER/mlflow`,\n"
        "`reid_raw.json`, `result.json`, `ckpt/last.pt`, `tests/<layer>/test_<module>.py`,\n"
        "[`model/build.py`](https://github.com/anosorae/IRRA/blob/main/model/build.py),\n"
        "`tests/model/test_model.py::test_mlm_logits_do_not_depend_on_batch_mates`.\n"
        "    python sweeps/launch.py --grid ablation --set model.pretrained=pretrained/clip\n"
    )
    assert refs(text) == []


# LICENSE and CITATION.cff: what pyproject.toml says, in the forms GitHub and tools read.


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_license_is_the_mit_text_pyproject_names():
    assert pyproject()["license"] == "MIT"
    text = (REPO / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("MIT License\n")
    assert "Copyright (c) 2026 the bilma authors" in text
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in text


def test_citation_cff_is_valid_cff_and_cites_both_papers():
    import yaml

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text(encoding="utf-8"))
    # The keys CFF 1.2.0 requires of a file and of each reference.
    assert cff["cff-version"] == "1.2.0"
    for key in ("message", "title"):
        assert isinstance(cff[key], str) and cff[key].strip(), key
    assert cff["authors"] and all("name" in a or "family-names" in a for a in cff["authors"])
    assert cff.get("type", "software") == "software"
    assert cff["license"] == pyproject()["license"]
    assert str(cff["version"]) == pyproject()["version"]
    refs = {r["title"]: r for r in cff["references"]}
    for ref in refs.values():
        assert ref["type"] and ref["authors"], ref["title"]
        assert all("family-names" in a and "given-names" in a for a in ref["authors"])
    bilma = refs["BiLMa: Bidirectional Local-Matching for Text-based Person Re-identification"]
    irra = refs[
        "Cross-Modal Implicit Relation Reasoning and Aligning for Text-to-Image Person Retrieval"
    ]
    assert [a["family-names"] for a in bilma["authors"]] == ["Fujii", "Tarashima"]
    assert [a["family-names"] for a in irra["authors"]] == ["Jiang", "Ye"]
    assert bilma["year"] == irra["year"] == 2023
    assert "2309.04675" in bilma["url"] and "2303.12501" in irra["url"]


def test_the_preflight_points_at_a_readme_section_that_exists():
    from bilma.sweep.preflight import DATASET_HELP

    section = re.search(r'README "([^"]+)"', DATASET_HELP).group(1)
    assert slug(section) in anchors((REPO / "README.md").read_text(encoding="utf-8"))
    assert re.search(rf"^## {re.escape(section)}$", (REPO / "README.md").read_text(), re.M)
