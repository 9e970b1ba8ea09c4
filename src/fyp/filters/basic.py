"""The feed's filters. Each keeps input order and never adds a candidate."""

from __future__ import annotations

import re

from fyp.pipeline.contracts import Candidate, FeedQuery, FilterResult


class DropUnavailable:
    """Items not licensed in the viewer's region never reach the viewer."""

    name = "drop_unavailable"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        kept: list[Candidate] = []
        removed: list[tuple[Candidate, str]] = []
        for cand in candidates:
            if cand.item is not None and cand.item.available_in(query.region):
                kept.append(cand)
            else:
                removed.append((cand, "unavailable_in_region"))
        return FilterResult(kept, removed)


class DropSeen:
    """An item once served or interacted with is never served again."""

    name = "drop_seen"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        seen = query.context.data.state.seen_among(query.user_id, [c.item_id for c in candidates])
        kept = [c for c in candidates if c.item_id not in seen]
        removed = [(c, "already_seen") for c in candidates if c.item_id in seen]
        return FilterResult(kept, removed)


class DropNotInterested:
    """Items marked not-interested (or reported), and their creators while muted."""

    name = "drop_not_interested"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        state = query.viewer
        kept: list[Candidate] = []
        removed: list[tuple[Candidate, str]] = []
        for cand in candidates:
            if cand.item_id in state.hidden_items:
                removed.append((cand, "not_interested_item"))
            elif cand.creator_id in state.muted_creators:
                removed.append((cand, "not_interested_creator"))
            else:
                kept.append(cand)
        return FilterResult(kept, removed)


_WORD = re.compile(r"\w+")


def _normalise(text: str) -> str:
    return " ".join(text.casefold().split())


class DropUserFiltered:
    """The viewer's own keyword filters and blocked tags (their controls) always apply.

    A keyword matches when it appears in the caption or in a tag, case-insensitively, as a whole
    word or phrase (``cat`` filters "my cat sleeps" but not "concatenate"); a blocked tag matches
    a tag exactly (case-insensitively, without a leading ``#``).
    """

    name = "drop_user_filtered"

    def apply(self, query: FeedQuery, candidates: list[Candidate]) -> FilterResult:
        controls = query.viewer.controls
        if not controls.keyword_filters and not controls.blocked_tags:
            return FilterResult(list(candidates), [])
        blocked = {_normalise(t).lstrip("#") for t in controls.blocked_tags}
        keywords = [
            f" {' '.join(words)} "
            for words in (_WORD.findall(_normalise(k)) for k in controls.keyword_filters)
            if words
        ]
        kept: list[Candidate] = []
        removed: list[tuple[Candidate, str]] = []
        for cand in candidates:
            tags = {_normalise(t).lstrip("#") for t in cand.tags}
            caption = cand.item.caption if cand.item is not None else ""
            words = " " + " ".join(_WORD.findall(_normalise(caption + " " + " ".join(tags)))) + " "
            if tags & blocked:
                removed.append((cand, "blocked_tag"))
            elif any(k in words for k in keywords):
                removed.append((cand, "keyword_filter"))
            else:
                kept.append(cand)
        return FilterResult(kept, removed)
