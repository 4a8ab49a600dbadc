"""`type: auto`: find out which server is on the port, then probe it as that type.

The first probe asks the identifying routes (identity.DETECTION_PATHS, stopping at the first answer that tells) and
remembers what answered per endpoint; later probes go straight to that type's adapter. A failed probe forgets it,
so a server swapped for another on the same port is found again. Nothing recognisable: the generic `openai`
adapter. The detected type is the result's `identity.looks_like`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from monitord.model import Identity, ProviderSpec
from monitord.providers.base import Adapter, Observation, ProbeHttp, TypeDefaults
from monitord.providers.identity import detect

FALLBACK = "openai"


@dataclass(frozen=True, slots=True)
class Auto:
    defaults: TypeDefaults
    adapters: Mapping[str, Adapter]
    # endpoint -> what answered there last time; only a type in `adapters` is ever kept
    detected: dict[str, Identity] = field(default_factory=dict, compare=False, hash=False, repr=False)

    async def observe(self, http: ProbeHttp, spec: ProviderSpec) -> Observation:
        known = self.detected.get(spec.base_url)
        if known is None:
            known = await self._detect(http, spec)
        assert known.looks_like is not None
        try:
            observation = await self.adapters[known.looks_like].observe(http, spec)
        except BaseException:
            self.detected.pop(spec.base_url, None)  # ask again next time: it may be another server now
            raise
        self.detected[spec.base_url] = known
        own = observation.identity
        identity = own if own is not None and own.looks_like in self.adapters else known
        return replace(observation, identity=identity)

    async def _detect(self, http: ProbeHttp, spec: ProviderSpec) -> Identity:
        sighting = await detect(http, spec)
        if sighting is not None and sighting.identity.looks_like in self.adapters:
            return sighting.identity
        return Identity(looks_like=FALLBACK, evidence="nothing named the server: probed as a generic OpenAI server")
