"""Composition root: builds every part from the config, wires them, owns start, reload and graceful stop.

The only module that knows every other. One client session, one store, one scheduler, one live state.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import Callable, Coroutine, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from monitord.alerts.outbox import Dispatcher
from monitord.alerts.rules import AlertPolicy, AlertRules, alert_provider, make_test_event
from monitord.api import ApiContext, ApiServer
from monitord.cluster import Cluster, default_instance_id
from monitord.config import Config, ConfigError, load_config
from monitord.health import HealthPolicy, LiveState
from monitord.model import AlertEvent, ProbeResult, ProviderSpec, Silence, Status, StatusChange
from monitord.probe import create_session, probe_provider, utcnow
from monitord.providers import ADAPTERS
from monitord.scheduler import ProbeScheduler
from monitord.store import RetentionPolicy, Store
from monitord.store.migrate import upgrade
from monitord.store.outbox import DeliveryRow
from monitord.systemd import Notifier, watchdog_interval_s

log = structlog.get_logger("monitord.daemon")

Clock = Callable[[], datetime]
STOP_STEP_TIMEOUT_S = 10.0  # each database step of a stop; the store's writer bounds its own final flush


async def probe_all(specs: Sequence[ProviderSpec], *, concurrency: int = 64,
                    session: aiohttp.ClientSession | None = None, clock: Clock = utcnow) -> list[ProbeResult]:
    """Probe every spec once, concurrently, in the given order. Used by `monitord check` and `run_once`."""
    limit = asyncio.Semaphore(concurrency)
    own = session is None
    http = session or create_session(limit=concurrency)

    async def one(spec: ProviderSpec) -> ProbeResult:
        async with limit:
            return await probe_provider(spec, ADAPTERS[spec.type], http, now=clock)

    try:
        return list(await asyncio.gather(*(one(s) for s in specs)))
    finally:
        if own:
            await http.close()


async def migrate(url: str) -> None:
    """Apply pending Alembic migrations."""
    await upgrade(url)


async def send_test_alert(config: Config, webhook: str | None = None, *,
                          timeout_s: float = 30.0) -> tuple[DeliveryRow, ...]:
    """`monitord alert test`: a `test` event through the real path (outbox, signing, delivery, retries)."""
    await migrate(config.storage.url)
    store = await Store.open(config.storage.url)
    session = create_session()
    try:
        dispatcher = Dispatcher(store, session, config.alerts.webhooks)
        event = make_test_event(utcnow(), uuid.uuid4().hex)
        await dispatcher.put(event, only=webhook)
        return await dispatcher.drain(event.id, timeout_s=timeout_s)
    finally:
        await session.close()
        await store.close()


class Daemon:
    """Owns the loop's long-lived parts. `start`/`stop` for embedding and tests, `run` for the CLI."""

    def __init__(self, config: Config, *, config_path: Path | None = None, clock: Clock = utcnow,
                 install_signal_handlers: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.install_signal_handlers = install_signal_handlers
        self.live = LiveState(self._policy(config))
        self.probed: set[str] = set()  # providers with at least one result since start: readiness
        self._specs: dict[str, ProviderSpec] = {s.name: s for s in config.provider_specs()}
        self.api: ApiContext | None = None
        self.rules = AlertRules(AlertPolicy())
        self._silences: list[Silence] = self._config_silences(config)  # API-made ones are appended
        self.dispatcher: Dispatcher | None = None
        self._api_server: ApiServer | None = None
        self._store: Store | None = None
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: ProbeScheduler | None = None
        self._cluster: Cluster | None = None  # set when cluster.enabled: several instances share the providers
        self._cluster_down = False
        self._stopping = asyncio.Event()
        self._notifier = Notifier()
        self._background: set[asyncio.Task[None]] = set()

    @staticmethod
    def _policy(config: Config) -> HealthPolicy:
        return HealthPolicy(failure_threshold=config.alerts.failure_threshold,
                            success_threshold=config.alerts.success_threshold,
                            window_s=config.ranking.window_s)

    @staticmethod
    def _config_silences(config: Config) -> list[Silence]:
        return [Silence(id=f"config-{i}", provider=s.provider, start=s.start, end=s.end, reason=s.reason)
                for i, s in enumerate(config.alerts.silences)]

    @property
    def store(self) -> Store:
        assert self._store is not None, "daemon not started"
        return self._store

    @property
    def specs(self) -> dict[str, ProviderSpec]:
        """Every configured provider by name; the same object until a reload replaces it."""
        return self._specs

    @property
    def api_port(self) -> int | None:
        return self._api_server.port if self._api_server else None

    @property
    def first_round_done(self) -> bool:
        return all(name in self.probed for name, s in self._specs.items() if s.enabled)

    async def start(self, *, serve_api: bool = True) -> None:
        """Migrate, open the store, rebuild live state from recent history, serve the API, start probing."""
        cfg = self.config
        await migrate(cfg.storage.url)
        self._store = await Store.open(cfg.storage.url, batch_size=cfg.storage.batch_size,
                                       flush_interval_s=cfg.storage.flush_interval_s,
                                       buffer_limit=cfg.storage.buffer_limit,
                                       write_timeout_s=cfg.storage.write_timeout_s)
        await self._store.start()
        specs = cfg.provider_specs()
        now = self.clock()
        await self._store.sync_providers(specs, now)
        recent = [r for r in await self._store.recent(now - timedelta(seconds=cfg.ranking.window_s))
                  if r.provider in self._specs]
        self.live.rebuild(recent, now, {s.name: s.type for s in specs})
        await self._load_api_silences(now)
        for spec in specs:
            self.live.track(spec.name, spec.type)
        self.api = ApiContext(live=self.live, specs=lambda: self._specs, store=self._store,
                              ready=lambda: self.first_round_done, token=cfg.api.token, clock=self.clock,
                              alerts=self, probe_ages=self._probe_ages, stale_probes=self._stale_probes)
        if serve_api:
            self._api_server = await ApiServer.start(self.api, cfg.api.host, cfg.api.port)
        self._session = create_session(limit=max(cfg.monitor.concurrency, 10))
        self.dispatcher = Dispatcher(self._store, self._session, cfg.alerts.webhooks)
        await self.dispatcher.start()
        self._spawn(self._watch_best())
        if cfg.cluster.enabled:
            self._cluster = Cluster(self._store, cfg.cluster.instance_id or default_instance_id(),
                                    cfg.cluster.lease_s, providers=[s.name for s in specs if s.enabled])
            await self._cluster_beat()  # hold leases before the first probe is due
            self._spawn(self._cluster_loop())
        self._spawn(self._retention_loop())
        self._scheduler = ProbeScheduler(self._probe, concurrency=cfg.monitor.concurrency,
                                         jitter_s=cfg.monitor.jitter_s)
        self._scheduler.sync(specs)
        self._scheduler.start()
        log.info("daemon.started", providers=len(specs), enabled=sum(s.enabled for s in specs),
                 storage=self._store.dialect, restored=len(recent), api_port=self.api_port)

    async def _probe(self, spec: ProviderSpec) -> None:
        assert self._session is not None
        if self._cluster is not None and not self._cluster.owns(spec.name):
            return  # another instance probes it; its results arrive through _cluster_beat
        result = await probe_provider(spec, ADAPTERS[spec.type], self._session, now=self.clock)
        self.record(result)

    def record(self, result: ProbeResult) -> list[StatusChange]:
        """Fan a result out to the store, the live state, the API and the alert rules; log status changes."""
        self.store.enqueue(result)
        if self._cluster is not None:
            self._cluster.observed(result)
        return self._fold(result)

    def _fold(self, result: ProbeResult, *, emit: bool = True) -> list[StatusChange]:
        """Live state, API and alert rules for a result probed here or, in a cluster, by another instance.

        Every instance folds every result, so all serve the same ranking and keep the same alert memory (a
        takeover neither repeats nor misses an alert); only the instance that probed emits (emit=False for a
        peer's result), since a few events carry the evaluation time in their id.
        """
        self.probed.add(result.provider)
        now = self.clock()
        changes = self.live.fold(result, now)
        if self.api is not None:
            self.api.on_result(result, changes)
        state, spec = self.live.get(result.provider), self._specs.get(result.provider)
        if state is not None and spec is not None:
            events = self.rules.on_probe(state, changes, alert_provider(spec), self._silences, now)
            if emit:
                self._emit(events)
        log.debug("probe.done", provider=result.provider, status=result.status.value,
                  error_class=result.error_class, total_ms=round(result.total_ms, 1))
        for change in changes:
            level = log.warning if change.current is Status.DOWN else log.info
            level("provider.status_changed", provider=change.provider, previous=change.previous.value,
                  current=change.current.value, error_class=result.error_class, error=result.error)
        return changes

    async def run_once(self) -> list[ProbeResult]:
        """Probe every enabled provider once now, record and flush (tests, `probe --once`)."""
        assert self._session is not None
        specs = [s for s in self._specs.values() if s.enabled]
        results = await probe_all(specs, concurrency=self.config.monitor.concurrency, session=self._session,
                                  clock=self.clock)
        for result in results:
            self.record(result)
        await self.store.flush()
        return results

    async def reload(self) -> bool:
        """Re-read the config; apply it completely or not at all. Returns whether it was applied."""
        applied = await self._reload()
        if self.api is not None:
            self.api.metrics.reloaded(applied)
        return applied

    async def _reload(self) -> bool:
        if self.config_path is None:
            return False
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
        except ConfigError as exc:
            log.error("config.reload_failed", path=str(self.config_path), problems=str(exc))
            return False
        if new.storage.url != self.config.storage.url:
            log.error("config.reload_failed", path=str(self.config_path),
                      problems="storage.url cannot change on reload; restart the daemon")
            return False
        old_webhooks = self.config.alerts.webhooks
        self.config = new
        specs = new.provider_specs()
        self._specs = {s.name: s for s in specs}
        if self._cluster is not None:
            self._cluster.set_providers(s.name for s in specs if s.enabled)
        self.live.policy = self._policy(new)
        assert self._scheduler is not None
        added, removed, changed = self._scheduler.sync(specs)
        for name in removed:
            self.live.remove(name)
            self.probed.discard(name)
            self.rules.forget(name)
        api_made = [s for s in self._silences if s.created_by != "config"]
        self._silences = self._config_silences(new) + api_made
        if self.dispatcher is not None and new.alerts.webhooks != old_webhooks:
            await self.dispatcher.stop()
            assert self._session is not None
            self.dispatcher = Dispatcher(self.store, self._session, new.alerts.webhooks)
            await self.dispatcher.start()
        for spec in specs:
            self.live.track(spec.name, spec.type)
        if self.api is not None:
            self.api.on_reload(removed)
        await self.store.sync_providers(specs, self.clock())
        log.info("config.reloaded", added=added, removed=removed, changed=changed)
        return True

    async def stop(self) -> None:
        """Stop probing (cancel in-flight probes), flush the store, close the session; in that order."""
        if self._scheduler is not None:
            await self._scheduler.shutdown()
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        if self._cluster is not None:
            try:
                async with asyncio.timeout(STOP_STEP_TIMEOUT_S):  # a silent database must not hold the stop
                    await self._cluster.leave()  # the others take over at their next heartbeat, not after a lease
            except Exception as exc:  # database away: the leases expire instead
                log.warning("cluster.leave_failed", error=type(exc).__name__)
        if self._api_server is not None:
            await self._api_server.close()
        if self.dispatcher is not None:
            try:
                async with asyncio.timeout(STOP_STEP_TIMEOUT_S):
                    await self.dispatcher.stop()
            except TimeoutError:  # the database went silent: unsaved events are reported by the dispatcher's log
                log.error("alert.stop_timed_out", timeout_s=STOP_STEP_TIMEOUT_S)
        if self._store is not None:
            await self._store.close()
            log.info("store.closed", written=self._store.written_total, dropped=self._store.dropped_total)
        if self._session is not None:
            await self._session.close()
        log.info("daemon.stopped")

    def _probe_ages(self) -> Mapping[str, float]:
        return self._scheduler.probe_ages_s() if self._scheduler is not None else {}

    def _stale_probes(self) -> list[str]:
        return self._scheduler.stale() if self._scheduler is not None else []

    def request_stop(self) -> None:
        self._stopping.set()

    def status_line(self) -> str:
        """What `systemctl status` shows: "3 up, 1 down, best: vllm"."""
        counts: dict[Status, int] = {}
        for state in self.live.all().values():
            counts[state.status] = counts.get(state.status, 0) + 1
        parts = [f"{counts.get(Status.UP, 0)} up", f"{counts.get(Status.DOWN, 0)} down"]
        parts += [f"{n} {status.value}" for status, n in counts.items()
                  if n and status not in (Status.UP, Status.DOWN)]
        best = self.best_provider()
        return ", ".join(parts) + f", best: {best or 'none'}"

    def best_provider(self) -> str | None:
        if self.api is None:
            return None
        best = self.api.top().best
        return best.provider if best else None

    def healthy(self) -> bool:
        """The watchdog's question: is the scheduler running and keeping time?"""
        scheduler = self._scheduler
        return scheduler is not None and scheduler.running and scheduler.overdue_s() < 30.0

    # -- the API's AlertsBackend -------------------------------------------------------------------------------

    async def recent_alerts(self, *, limit: int, since: datetime | None, provider: str | None,
                            event_type: str | None) -> list[dict[str, Any]]:
        assert self.dispatcher is not None
        records = await self.dispatcher.outbox.recent(limit=limit, since=since, provider=provider,
                                                      event_type=event_type)
        return [record.to_dict() for record in records]

    def silences(self) -> Sequence[Silence]:
        return tuple(self._silences)

    async def _load_api_silences(self, now: datetime) -> None:
        """API-made silences live in the database: a restart, and every instance of a cluster, honour them."""
        try:
            stored = await self.store.silences.active(now)
        except Exception as exc:  # the database is away: config silences still apply
            log.warning("silences.load_failed", error=type(exc).__name__)
            return
        self._silences = [s for s in self._silences if s.created_by == "config"] + stored

    async def add_silence(self, silence: Silence) -> None:
        await self.store.silences.put(silence, self.clock())
        self._silences.append(silence)
        log.info("silence.added", id=silence.id, provider=silence.provider, end=silence.end.isoformat(),
                 reason=silence.reason)

    async def remove_silence(self, silence_id: str) -> bool:
        await self.store.silences.delete(silence_id)
        kept = [s for s in self._silences if s.id != silence_id]
        removed = len(kept) != len(self._silences)
        self._silences = kept
        if removed:
            log.info("silence.removed", id=silence_id)
        return removed

    def _emit(self, events: list[AlertEvent]) -> None:
        if events and self.dispatcher is not None:
            for event in events:
                name = event.provider.name if event.provider else None
                log.info("alert.raised", type=event.type.value, provider=name, silenced=bool(event.silenced_by))
            self.dispatcher.emit(events)

    async def _watch_best(self) -> None:
        """Once a second, let the rules see the default ranking's best (they wait for it to hold before alerting)."""
        while True:
            best = self.api.top().best if self.api is not None else None
            spec = self._specs.get(best.provider) if best is not None else None
            events = self.rules.on_ranking(alert_provider(spec) if spec else None, self._silences, self.clock())
            if self._cluster is None or self._cluster.leader:  # these ids carry the time: one instance sends
                self._emit(events)
            await asyncio.sleep(1.0)

    # -- several instances, retention --------------------------------------------------------------------------

    async def _cluster_loop(self) -> None:
        assert self._cluster is not None
        while True:
            await asyncio.sleep(self._cluster.lease_s / 3)
            await self._cluster_beat()

    async def _cluster_beat(self) -> None:
        """Renew leases, fold the other instances' new probes, probe soon what was just taken over.

        A database outage is logged once; probing goes on with the providers held (see Cluster.owns).
        """
        cluster = self._cluster
        assert cluster is not None
        now = self.clock()
        window_s = (max((s.timeout_s for s in self._specs.values()), default=0.0)
                    + self.config.storage.flush_interval_s + cluster.lease_s + 2.0)  # a probe, a flush, a beat
        try:
            beat = await cluster.heartbeat(now)
            peers = await cluster.peer_results(now - timedelta(seconds=window_s))
        except Exception as exc:  # whatever the driver raised, the database did not answer
            if not self._cluster_down:
                self._cluster_down = True
                log.warning("cluster.heartbeat_failed", error=type(exc).__name__, held=len(cluster.held))
            return
        if self._cluster_down:
            self._cluster_down = False
            log.info("cluster.heartbeat_recovered", held=len(cluster.held))
        for result in peers:
            if result.provider in self._specs:
                self._fold(result, emit=False)
        await self._load_api_silences(now)  # another instance may have added or ended one
        for name in beat.acquired:
            self._probe_soon(name, now)

    def _probe_soon(self, name: str, now: datetime) -> None:
        """A provider just taken over: probe it when its last probe (by anyone) is one interval old."""
        spec = self._specs.get(name)
        if spec is None or not spec.enabled or self._scheduler is None:
            return
        state = self.live.get(name)
        last = state.last_probe_at if state is not None else None
        # clamped to one interval: after a backward wall clock step `last` can lie in the future
        due_s = 0.0 if last is None else min(spec.probe_interval_s,
                                             max(0.0, (last - now).total_seconds() + spec.probe_interval_s))
        self._scheduler.schedule(spec, first_delay_s=due_s)

    async def _retention_loop(self) -> None:
        """Roll up and prune every storage.retention.prune_interval (one instance at a time on a shared database)."""
        while True:
            kept = self.config.storage.retention
            await asyncio.sleep(kept.prune_interval_s)
            policy = RetentionPolicy(raw_s=kept.raw_s, minute_rollups_s=kept.minute_rollups_s,
                                     hour_rollups_s=kept.hour_rollups_s, batch_size=kept.batch_size)
            try:
                await self.store.retention(policy).run_once(self.clock())
            except Exception as exc:  # the database is away: the next run catches up
                log.warning("store.retention_failed", error=type(exc).__name__)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _heartbeat(self) -> None:
        """Tell systemd how we are; ping the watchdog only while the loop and the scheduler work."""
        watchdog_s = watchdog_interval_s()
        period = min(watchdog_s or 5.0, 5.0)
        while True:
            self._notifier.status(self.status_line())
            if watchdog_s is not None and self.healthy():
                self._notifier.watchdog()
            await asyncio.sleep(period)

    async def _reload_from_signal(self) -> None:
        self._notifier.reloading()
        await self.reload()
        self._notifier.ready(self.status_line())

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), stop cleanly. Returns the exit code."""
        loop = asyncio.get_running_loop()
        if self.install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, lambda: self._spawn(self._reload_from_signal()))
        try:
            await self.start()
            self._notifier.ready(self.status_line())
            self._spawn(self._heartbeat())
            await self._stopping.wait()
        finally:
            self._notifier.stopping()
            await self.stop()
            self._notifier.close()
            if self.install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
        return 0
