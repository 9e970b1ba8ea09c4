"""The For You feed: which component fills each stage slot, in order.

Read this list to know what the feed does; read ``fyp.pipeline.runner`` to know the order the slots
run in. Every component has a stable ``name`` (it appears in traces and reasons).
"""

from __future__ import annotations

from fyp.config import FypConfig
from fyp.errors import NotFound
from fyp.filters.basic import DropNotInterested, DropSeen, DropUnavailable, DropUserFiltered
from fyp.pipeline.contracts import BackfillSource, CandidateSource, FeedQuery, FeedResult
from fyp.pipeline.runner import FeedPipeline
from fyp.scoring.features import (
    CreatorAffinityScorer,
    EngagementScorer,
    FreshnessScorer,
    PopularityScorer,
    RetrievalScorer,
    TagAffinityScorer,
)
from fyp.scoring.ranker import RankerScorer
from fyp.scoring.value_model import PlainOrder, ValueModel
from fyp.selectors.basic import (
    DiversifyTags,
    RankByScore,
    ReserveExploration,
    SpaceCreators,
    TakeN,
)
from fyp.sources.co_engagement import CoEngagementSource
from fyp.sources.content_tower import ContentTowerSource
from fyp.sources.embedding import EmbeddingSource
from fyp.sources.following import FollowingSource
from fyp.sources.fresh import FreshSource
from fyp.sources.interest_tags import InterestTagsSource
from fyp.sources.more_from_catalog import MoreFromCatalog
from fyp.sources.trending import TrendingSource
from fyp.storage.roles import ServedItem


class ViewerMustExist:
    """Gate: a feed is only served to a viewer known in the region."""

    name = "viewer_must_exist"

    def check(self, query: FeedQuery) -> None:
        user = query.context.data.users.get_user(query.user_id)
        if user is None:
            raise NotFound(f"no user {query.user_id!r} in region {query.region!r}")
        query.user = user


class LoadViewerState:
    """Hydrator: follows, hidden items, muted creators, affinities, recent positives."""

    name = "load_viewer_state"

    def hydrate(self, query: FeedQuery) -> None:
        query.state = query.context.data.state.hydrate(query.user_id, query.now)


class RecordServed:
    """Side effect: log the response and mark its items seen (they never return)."""

    name = "record_served"

    def run(self, query: FeedQuery, result: FeedResult) -> None:
        query.context.data.state.record_served(
            query.user_id,
            result.request_id,
            result.model_version,
            [
                ServedItem(
                    item_id=item.item_id,
                    position=position,
                    score=item.score,
                    reasons=[{"code": r.code, "text": r.text} for r in item.reasons],
                )
                for position, item in enumerate(result.items)
            ],
            query.now,
        )


def backfill_sources(config: FypConfig) -> list[BackfillSource]:
    """What fills a page the sources left short (both feeds): unless switched off, more from the
    catalog, popular in the region first, then newest."""
    backfill = config.sources.more_from_catalog
    return [MoreFromCatalog(backfill)] if backfill.enabled else []


def for_you_pipeline(config: FypConfig) -> FeedPipeline:
    s = config.sources
    candidates: list[tuple[bool, CandidateSource]] = [
        (s.embedding.enabled, EmbeddingSource(s.embedding, config.training)),
        (
            s.content_tower.enabled,
            ContentTowerSource(s.content_tower, s.embedding, config.training),
        ),
        (s.co_engagement.enabled, CoEngagementSource(s.co_engagement)),
        (s.interest_tags.enabled, InterestTagsSource(s.interest_tags)),
        (s.following.enabled, FollowingSource(s.following)),
        (s.trending.enabled, TrendingSource(s.trending)),
        (s.fresh.enabled, FreshSource(s.fresh)),
    ]
    return FeedPipeline(
        gates=[ViewerMustExist()],
        hydrators=[LoadViewerState()],
        sources=[source for enabled, source in candidates if enabled],
        filters=[DropUnavailable(), DropNotInterested(), DropUserFiltered(), DropSeen()],
        backfill=backfill_sources(config),
        scorers=[
            RetrievalScorer(s),
            CreatorAffinityScorer(config.scoring),
            TagAffinityScorer(config.scoring),
            EngagementScorer(config.scoring),
            FreshnessScorer(config.scoring),
            PopularityScorer(),
            *(
                [RankerScorer(config.ranker, config.training, s.embedding.history)]
                if config.ranker.enabled
                else []
            ),
            ValueModel(config.scoring),  # last: its output is the candidate's score
        ],
        selectors=[
            RankByScore(),
            DiversifyTags(config.selectors),
            ReserveExploration(config.selectors, s.fresh),
            SpaceCreators(config.selectors),
            TakeN(),
        ],
        side_effects=[RecordServed()],
    )


def non_personalized_pipeline(config: FypConfig) -> FeedPipeline:
    """The feed of a viewer who switched personalization off: not based on profiling.

    Newest items of the creators they follow, then what is popular in their region, then (when
    those run out) more from the catalog: popular in the region, then newest. Their own filters
    and not-interested choices still apply, and seen items still never return. No affinity,
    learned embedding or co-engagement with their history takes part.
    """
    s = config.sources
    return FeedPipeline(
        gates=[ViewerMustExist()],
        hydrators=[LoadViewerState()],
        sources=[FollowingSource(s.following), TrendingSource(s.trending)],
        filters=[DropUnavailable(), DropNotInterested(), DropUserFiltered(), DropSeen()],
        backfill=backfill_sources(config),
        scorers=[PlainOrder()],
        selectors=[RankByScore(), SpaceCreators(config.selectors), TakeN()],
        side_effects=[RecordServed()],
    )
