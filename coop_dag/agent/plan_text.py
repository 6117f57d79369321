"""The templated teacher's plan messages: their phrasings, how they describe a file's changed
regions, and how they read the partner's plan (which paths it claims, which functions it names
per file, who takes which part of a file both plans name).
"""

from __future__ import annotations

import re

from coop_dag.agent.patch_regions import MODULE_LEVEL, patch_files
from coop_dag.dataset.tasks import Feature
from coop_dag.util.paths import extract_paths

MAX_REGIONS = 3  # per file in a message: plans must stay short enough for a small student
_IDENT_RE = re.compile(r"`([A-Za-z_][\w.]*(?:\(\))?)`")

# Phrasings vary across rollouts; each keeps >= 2 plan keywords and the task's paths. `{mine}`
# lists each file with the functions/classes the edit touches there.
PROPOSALS = (
    "Plan: I'll implement {title} and edit {mine}. You take your feature's files; "
    "tell me which ones so we don't overlap. I'll start once I have your plan.",
    "Hi {partner}, here is my plan to split the work: I'll take {mine} for {title}. "
    "Which files will you edit? I'll stay out of your part.",
    "Proposed split: first I'll change {mine} ({title}). You keep to your own files; "
    "send me your list and I'll stay out of your part.",
    "Plan for our split: I'll own {mine} to add {title}. Could you reply with the files you "
    "will edit, so each step stays clear of the other's code?",
)
# The proposer cannot know the partner's files yet: it offers to split a file rather than assume
# the files are disjoint.
SHARE_OFFERS = (
    "If you need one of these files too, name your functions there and we'll split it by function.",
    "Need one of my files too? Tell me which functions, and we'll split that file.",
)
# Used only when the partner named files and none of them is one of mine.
ACKS = (
    "Thanks, plan agreed. You take {theirs}; I'll take {mine} for {title}. No overlap, "
    "so I'll start now.",
    "Sounds good: split confirmed. I'll edit {mine} ({title}) and you edit {theirs}. "
    "I'll stay off your files.",
    "Agreed. First I'll do {mine} for {title}; you keep {theirs}. Next step for me is "
    "reading my files.",
)
# Both plans name a file: split it. `{split}` says who takes which regions of each shared file.
SHARED_ACKS = (
    "Thanks for the plan. We overlap: we both edit {shared}. Split by function. {split} "
    "I'll start on {title} now and stay inside my part.",
    "Agreed, with one thing to settle: {shared} is in both our plans. Proposed split. {split} "
    "First step for me is my part of {title}.",
    "Plan received. You and I both need {shared}, so here is a split by function. {split} "
    "I'll keep my edits for {title} to my part.",
)
# Proposals crossed (both agents proposed) and both name a file: settle the split right away.
FOLLOW_UPS = (
    "Our plans overlap: we both edit {shared}. Split by function. {split} "
    "I'll stay inside my part for {title}.",
    "We both listed {shared}, so let's split it. {split} I'll keep my edits for {title} to "
    "my part.",
)
# The partner's message named no file: ask, never fill in a placeholder.
ASK_FILES_ACKS = (
    "Thanks. I'll take {mine} for {title}. Your plan didn't say which files you will edit: "
    "which ones are they? If one of mine is among them, I'll split it with you by function.",
    "Got your message. My plan: {mine} for {title}. Could you list the files you will "
    "change, so we can split any file we both need?",
)
THOUGHTS = {
    "read": "Our plan is settled. I'll look at the outline of the files I claimed.",
    "edit": "I'll apply my change to the files from my plan.",
    "test": "Now I'll run the test suite to check my change.",
    "submit": "The change is in and the tests ran. Submitting.",
}


def feature_title(feature: Feature) -> str:
    match = re.search(r"\*\*Title\*\*:\s*(.+)", feature.description)
    title = match.group(1).strip() if match else f"feature {feature.feature_id}"
    return title.replace("`", "")[:80]


def own_files(feature: Feature) -> list[str]:
    """The files this feature edits: its gold patch's files (task-derived, like v5-tf)."""
    text = feature.feature_patch.read_text() if feature.feature_patch.is_file() else ""
    return patch_files(text) or list(feature.files)


def quote_paths(paths: list[str]) -> str:
    return ", ".join(f"`{p}`" for p in paths)


def describe_file(path: str, regions: list[str]) -> str:
    """`path` with at most MAX_REGIONS region names: "`a.py` (`f()`, `C.g()`)". Module level
    is left out when the file has named regions (imports alone are not worth a line in a plan).
    """
    named = _named(regions)
    if not named:
        return f"`{path}`"
    shown = ", ".join(f"`{r}`" for r in named[:MAX_REGIONS])
    more = f" and {len(named) - MAX_REGIONS} more" if len(named) > MAX_REGIONS else ""
    return f"`{path}` ({shown}{more})"


def _named(regions: list[str]) -> list[str]:
    """Regions worth naming in a plan: not module level, and not a class whose methods are
    named anyway (a class line is usually its docstring or a field next to them)."""
    return [
        r for r in regions if r != MODULE_LEVEL and not any(o.startswith(f"{r}.") for o in regions)
    ]


def _bare(name: str) -> str:
    return name.removesuffix("()")


_PRONOUN_RE = re.compile(r"\b(I(?:['\u2019](?:ll|m|d))?|[Mm]y|[Ww]e|[Yy]ou|[Yy]our)\b")


def claimed_paths(text: str, paths: list[str]) -> list[str]:
    """The paths `text`'s author claims for itself: the last pronoun before a mention decides
    ("I'll take `a`; you keep `b`" claims `a`, not `b`); a path no pronoun precedes counts as
    claimed. A path is claimed if any of its mentions is."""
    out = []
    for path in paths:
        for m in re.finditer(rf"(?<![\w/.-]){re.escape(path)}(?![\w/])", text):
            pronouns = _PRONOUN_RE.findall(text[: m.start()])
            if not pronouns or pronouns[-1].lower() not in ("you", "your"):
                out.append(path)
                break
    return out


def _partner_regions(plan: str, paths: list[str]) -> dict[str, list[str]]:
    """Function/class names in backticks in the partner's message, per path: a name belongs to
    the last path named before it ("`a.py` (`f()`, `C.g()`)"); names before any path are left
    out."""
    spans = sorted(
        (m.start(), path)
        for path in paths
        for m in re.finditer(rf"(?<![\w/.-]){re.escape(path)}(?![\w/])", plan)
    )
    out: dict[str, dict[str, None]] = {path: {} for path in paths}
    for match in _IDENT_RE.finditer(plan):
        name = match.group(1)
        if name in paths or extract_paths(name):
            continue
        owner = [path for start, path in spans if start < match.start()]
        if owner:
            out[owner[-1]].setdefault(name, None)
    return {path: list(names) for path, names in out.items()}


def _partner_unlisted(plan: str, path: str) -> int:
    """How many regions the partner left unnamed for `path` ("`a.py` (`f()`, ... and 2 more)")."""
    m = re.search(rf"`{re.escape(path)}` \([^()]*?(?:\(\)[^()]*?)* and (\d+) more\)", plan)
    return int(m.group(1)) if m else 0


def shared_split(
    plan: str, named: list[str], shared: list[str], regions: dict[str, list[str]]
) -> str:
    """Who takes which functions of each shared file: mine from my edit's `regions`
    (`patch_regions`), theirs from the names the partner's plan (`plan`, naming the paths
    `named`) gives for that file; code both need is flagged."""
    partner_regions = _partner_regions(plan, named)
    parts = []
    contested = False
    for path in shared:
        own = _named(regions.get(path, []))
        own_bare = {_bare(r) for r in own}
        theirs_here = partner_regions.get(path, [])
        both = [n for n in theirs_here if _bare(n) in own_bare]
        others = [n for n in theirs_here if _bare(n) not in own_bare][:MAX_REGIONS]
        mine_only = [r for r in own if _bare(r) not in {_bare(n) for n in both}]
        clauses = []
        if mine_only or not both:
            names = ", ".join(f"`{r}`" for r in mine_only[:MAX_REGIONS])
            clauses.append(f"I take {names or 'the parts my feature changes'}")
        if others:
            clauses.append(f"you take {', '.join(f'`{n}`' for n in others)}")
        elif not both:
            clauses.append("you take the rest of it (tell me which functions)")
        if both:
            contested = True
            clauses.append(f"we both need {', '.join(f'`{n}`' for n in both)}")
        unlisted = _partner_unlisted(plan, path)
        if unlisted:
            clauses.append(
                f"you left {unlisted} more unnamed there: name them so we catch any clash"
            )
        parts.append(f"In `{path}` " + "; ".join(clauses) + ".")
    split = " ".join(parts)
    if contested:
        split += (
            " Where we both need the same code, I'll keep my change to its own block and "
            "we merge it with care."
        )
    return split
