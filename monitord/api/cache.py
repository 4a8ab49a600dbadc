"""The ranking cache lives in the ranking service (monitord.ranking_service); re-exported for the API's modules."""

from __future__ import annotations

from monitord.ranking_service import DEFAULT_CRITERIA, RankingCache

__all__ = ["DEFAULT_CRITERIA", "RankingCache"]
