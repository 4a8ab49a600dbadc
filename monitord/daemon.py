"""Composition root: builds the parts from the config and owns start, stop, signals, reload and `run_once`.

The only module that knows every other. One client session, one store, one scheduler, one live state. What
happens to a result is the pipeline's business (monitord.pipeline), alerts and silences the alerts service's,
the best provider the ranking service's, the cluster beat cluster.py's, the watchdog systemd.py's; background
loops run under one supervisor (monitord.supervisor).
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import structlog

from monitord import logs
from monitord.alerts.outbox import Dispatcher
from monitord.alerts.rules import make_test_event
from monitord.alerts.service import AlertsService, alert_policy
from monitord.api import ApiContext, ApiServer
from monitord.api.metrics import SchedulerCollector
from monitord.canary import CanaryJob, CanaryRunner, canary_jobs, job_model
from monitord.cluster import Cluster, ClusterBeat, default_instance_id
from monitord.config import Config, ConfigError, load_config
from monitord.health import HealthPolicy, LiveState
from monitord.model import Capacity, GenerationSample, ProbeResult, ProviderSpec, Status, StatusChange
from monitord.pipeline import Parts, Recorded, ResultPipeline, wire
from monitord.probe import create_session, probe_provider, utcnow
from monitord.providers import ADAPTERS
from monitord.ranking_service import RankingService
from monitord.reload import ReloadPlan, ReloadRefused
from monitord.reload import plan as reload_plan
from monitord.scheduler import ProbeScheduler
from monitord.store import RetentionPolicy, Store
from monitord.store.migrate import upgrade
from monitord.store.outbox import DeliveryRow
from monitord.store.retention import prune_periodically
from monitord.store.writer import check_settings as check_writer_settings
from monitord.store.writer import describe_error
from monitord.supervisor import Supervisor
from monitord.systemd import Notifier, heartbeat

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


class StartupError(Exception):
    """A start-up step failed (busy port, unreachable database, bad migration): one log line, exit 1."""

    def __init__(self, step: str, cause: BaseException) -> None:
        super().__init__(f"{step}: {str(cause) or type(cause).__name__}")
        self.step = step
        self.cause = cause


class Daemon:
    """Builds the parts and owns their lifecycle. `start`/`stop` for embedding and tests, `run` for the CLI."""

    def __init__(self, config: Config, *, config_path: Path | None = None, clock: Clock = utcnow,
                 install_signal_handlers: bool = True) -> None:
        self.config = config
        self.config_path = config_path
        self.clock = clock
        self.install_signal_handlers = install_signal_handlers
        self.live = LiveState(self._policy(config))
        self.probed: set[str] = set()  # providers with at least one result since start: readiness
        self._specs: dict[str, ProviderSpec] = {s.name: s for s in config.provider_specs()}
        self.pipeline = ResultPipeline(clock)
        self.rankings = RankingService(self.live, lambda: self._specs, clock=clock)
        self.api: ApiContext | None = None
        self.alerts: AlertsService | None = None
        self._api_server: ApiServer | None = None
        self._store: Store | None = None
        self._session: aiohttp.ClientSession | None = None
        self._scheduler: ProbeScheduler[ProviderSpec] | None = None
        self._canary_scheduler: ProbeScheduler[CanaryJob] | None = None  # its own timers, tasks and cap
        self.canaries: CanaryRunner | None = None
        self._capacity: dict[str, Capacity] = {}  # the last Capacity each provider's probe published
        self._cluster: Cluster | None = None  # set when cluster.enabled: several instances share the providers
        self._stopping = asyncio.Event()
        self._notifier = Notifier()
        self.supervisor = Supervisor(on_failure=lambda _name: self.request_stop())
        self._retention_rescheduled = asyncio.Event()

    @staticmethod
    def _policy(config: Config) -> HealthPolicy:
        return HealthPolicy(failure_threshold=config.alerts.failure_threshold,
                            success_threshold=config.alerts.success_threshold,
                            window_s=config.ranking.window_s, stall_window_s=config.monitor.stall_window_s)

    @property
    def store(self) -> Store:
        assert self._store is not None, "daemon not started"
        return self._store

    @property
    def dispatcher(self) -> Dispatcher | None:
        return self.alerts.dispatcher if self.alerts is not None else None

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
        """Migrate, open the store, rebuild live state from recent history, serve the API, start probing.

        Raises StartupError naming the step that failed.
        """
        cfg = self.config
        async with _step("migrate"):
            await migrate(cfg.storage.url)
        async with _step("store"):
            self._store = await Store.open(cfg.storage.url, batch_size=cfg.storage.batch_size,
                                           flush_interval_s=cfg.storage.flush_interval_s,
                                           buffer_limit=cfg.storage.buffer_limit,
                                           write_timeout_s=cfg.storage.write_timeout_s,
                                           max_models_per_provider=cfg.monitor.max_models,
                                           forget_models_after_s=cfg.storage.forget_models_after_s)
            await self._store.start()
            specs = list(self._specs.values())  # the same objects: a second copy of every spec costs ~1 KB each
            now = self.clock()
            await self._store.sync_providers(specs, now)
            recent = [r for r in await self._store.recent(now - timedelta(seconds=cfg.ranking.window_s))
                      if r.provider in self._specs]
            generation = self.rankings.generation
            samples = await self._store.generation_recent(now - timedelta(seconds=generation.policy.window_s))
        self.live.rebuild(recent, now, {s.name: s.type for s in specs})
        generation.rebuild(samples, now, self._specs)  # TTFT and tokens/s survive a restart, like availability
        for spec in specs:
            self.live.track(spec.name, spec.type)
        self._session = create_session(limit=0)  # no pool cap: the scheduler's limit (monitor.concurrency) is the cap
        if cfg.cluster.enabled:
            self._cluster = Cluster(self._store, cfg.cluster.instance_id or default_instance_id(),
                                    cfg.cluster.lease_s, providers=[s.name for s in specs if s.enabled])
        cluster = self._cluster
        self.alerts = AlertsService(self._store, self._session, self.live, lambda: self._specs,
                                    cfg.alerts.webhooks, cfg.alerts.silences, clock=self.clock,
                                    leader=lambda: cluster is None or cluster.leader,
                                    policy=alert_policy(cfg.alerts), group_wait_s=cfg.alerts.group_wait_s)
        self.api = ApiContext(live=self.live, specs=lambda: self._specs, store=self._store,
                              ready=lambda: self.first_round_done, token=lambda: self.config.api.token,
                              clock=self.clock, alerts=self.alerts, rankings=self.rankings,
                              probe_ages=self._probe_ages, stale_probes=self._stale_probes,
                              report_sink=self.pipeline.record)
        wire(self.pipeline, Parts(live=self.live, store=self._store, rankings=self.rankings, alerts=self.alerts,
                                  probed=self.probed, api=self.api, cluster=self._cluster))
        self.pipeline.subscribe(ProbeResult, self._note_capacity, name="canary.capacity")
        self.rankings.subscribe(self.alerts.on_best)
        if serve_api:
            async with _step("api"):
                self._api_server = await ApiServer.start(self.api, cfg.api.host, cfg.api.port,
                                                         max_connections=cfg.api.max_connections,
                                                         idle_timeout_s=cfg.api.idle_timeout_s)
        async with _step("alerts"):
            await self.alerts.start()
        self.supervisor.spawn("ranking.watch", self.rankings.watch())
        if self._cluster is not None:
            beat = ClusterBeat(self._cluster, clock=self.clock, window_s=self._peer_window_s,
                               is_configured=lambda name: name in self._specs,
                               fold_peer=lambda result: self.pipeline.record(result, local=False),
                               refresh=self.alerts.load_stored_silences, probe_soon=self._probe_soon,
                               taken_over=self.alerts.load_alert_state)
            await beat.beat()  # hold leases before the first probe is due
            self.supervisor.spawn("cluster.beat", beat.run())
        self.supervisor.spawn("store.retention", prune_periodically(
            self.store.retention, self._retention_schedule, self.clock, rescheduled=self._retention_rescheduled))
        cluster = self._cluster
        self._scheduler = ProbeScheduler(self._probe, concurrency=cfg.monitor.concurrency,
                                         jitter_s=cfg.monitor.jitter_s,
                                         wanted=(lambda spec: cluster.owns(spec.name)) if cluster else None)
        self._scheduler.sync(specs)
        self._scheduler.start()
        self.canaries = CanaryRunner(self._session, concurrency=cfg.monitor.canary.concurrency, now=self.clock)
        self._canary_scheduler = ProbeScheduler(self._canary, concurrency=cfg.monitor.canary.concurrency,
                                                wanted=(lambda job: cluster.owns(job.spec.name)) if cluster else None)
        self._canary_scheduler.sync(canary_jobs(specs))
        self._canary_scheduler.start()
        self.api.metrics.register(SchedulerCollector(
            lambda: {"probe": self._scheduler, "canary": self._canary_scheduler}))
        log.info("daemon.started", providers=len(specs), enabled=sum(s.enabled for s in specs),
                 storage=self._store.dialect, restored=len(recent), api_port=self.api_port)
        for warning in cfg.warnings():
            log.warning("config.warning", detail=warning)

    def _peer_window_s(self) -> float:
        """How far back a peer's probe row may still land: the longest probe, a writer flush, a margin."""
        return (max((s.timeout_s for s in self._specs.values()), default=0.0)
                + self.config.storage.flush_interval_s + 2.0)

    def _retention_schedule(self) -> tuple[float, RetentionPolicy]:
        kept = self.config.storage.retention
        return kept.prune_interval_s, RetentionPolicy(raw_s=kept.raw_s, minute_rollups_s=kept.minute_rollups_s,
                                                      hour_rollups_s=kept.hour_rollups_s, alerts_s=kept.alerts_s,
                                                      batch_size=kept.batch_size)

    async def _probe(self, spec: ProviderSpec) -> float | None:
        """Probe once and record; when the provider is failing but not yet down, how soon to probe it again."""
        assert self._session is not None
        if self._cluster is not None and not self._cluster.owns(spec.name):
            return None  # another instance probes it; its results arrive through the cluster beat
        result = await probe_provider(spec, ADAPTERS[spec.type], self._session, now=self.clock)
        self.pipeline.record(result)
        state = self.live.get(spec.name)
        if state is not None and state.suspect and state.status is not Status.DOWN:
            return min(spec.retry_interval_s, spec.probe_interval_s)
        return None

    def _note_capacity(self, recorded: Recorded[ProbeResult]) -> None:
        capacity = recorded.observation.capacity
        if capacity is not None:
            self._capacity[recorded.observation.provider] = capacity

    async def _canary(self, job: CanaryJob) -> None:
        """One canary of one job, recorded through the pipeline. Only a provider that answers its health routes
        as the configured server (up, degraded, or stalled: to see it recover) gets one; down, loading,
        misconfigured or not yet probed, it is not up anyway, and a canary would only queue or load."""
        assert self.canaries is not None
        spec = job.spec
        if self._cluster is not None and not self._cluster.owns(spec.name):
            return
        state = self.live.get(spec.name)
        if state is None or state.status not in (Status.UP, Status.DEGRADED, Status.STALLED):
            return
        if spec.name not in self.probed:
            return  # a status restored from the store lists no model: wait for this run's first probe
        chosen = job_model(job, [served.info for served in state.models])
        if chosen is None:
            return
        model, kind = chosen
        sample = await self.canaries.run(spec, model, kind=kind, capacity=self._capacity.get(spec.name))
        self.pipeline.record(sample)

    def record(self, observation: ProbeResult | GenerationSample) -> tuple[StatusChange, ...]:
        """A probe result or canary sample made elsewhere (tests, embedding) through the pipeline."""
        return self.pipeline.record(observation)

    async def run_once(self) -> list[ProbeResult]:
        """Probe every enabled provider once now, record and flush (tests, `probe --once`)."""
        assert self._session is not None
        specs = [s for s in self._specs.values() if s.enabled]
        results = await probe_all(specs, concurrency=self.config.monitor.concurrency, session=self._session,
                                  clock=self.clock)
        for result in results:
            self.pipeline.record(result)
        await self.store.flush()
        return results

    async def reload(self) -> bool:
        """Re-read the config and apply what changed (monitord.reload): every reloadable key where it is used,
        or nothing at all. Returns whether it was applied; the reload-success gauge says the same."""
        applied = await self._reload()
        if self.api is not None:
            self.api.metrics.reloaded(applied)
        return applied

    async def _reload(self) -> bool:
        if self.config_path is None:
            return False
        path = str(self.config_path)
        # The steps that can fail come first; a failure in any of them applies nothing.
        try:
            new = await asyncio.to_thread(load_config, self.config_path)
            diff = reload_plan(self.config, new)
            settings = self._writer_settings(new)
            check_writer_settings(batch_size=settings["batch_size"], flush_interval_s=settings["flush_interval_s"],
                                  buffer_limit=settings["buffer_limit"], write_timeout_s=settings["write_timeout_s"])
            specs = new.provider_specs()
            await self.store.sync_providers(specs, self.clock())  # the database: may be away
        except ConfigError as exc:
            log.error("config.reload_failed", path=path, problems=str(exc))
            return False
        except ReloadRefused as exc:
            log.error("config.reload_failed", path=path, problems=str(exc), keys=list(exc.keys))
            return False
        except Exception as exc:  # the database did not answer, or a setting the writer cannot take
            log.error("config.reload_failed", path=path, problems=describe_error(exc),
                      error_class=type(exc).__name__)
            return False
        added, removed, changed = await self._apply(new, specs, diff)
        log.info("config.reloaded", added=added, removed=removed, changed=changed, keys=list(diff.changed))
        return True

    async def _apply(self, new: Config, specs: Sequence[ProviderSpec],
                     diff: ReloadPlan) -> tuple[list[str], list[str], list[str]]:
        """Put every changed key in force where it is used. Nothing here can fail for the database."""
        assert self._scheduler is not None and self.alerts is not None
        old, self.config = self.config, new  # api.token: the auth middleware reads self.config on every request
        if diff.any(("logging.level", "logging.format")):
            logs.configure(new.logging.level, new.logging.format)
        self._specs = {s.name: s for s in specs}
        if self._cluster is not None:
            self._cluster.set_providers(s.name for s in specs if s.enabled)
        self.live.set_policy(self._policy(new), self.clock())  # thresholds and windows, existing providers too
        self._scheduler.reconfigure(concurrency=new.monitor.concurrency, jitter_s=new.monitor.jitter_s)
        added, removed, changed = self._scheduler.sync(specs)
        if self._canary_scheduler is not None:
            self._canary_scheduler.reconfigure(concurrency=new.monitor.canary.concurrency, jitter_s=0.0)
            self._canary_scheduler.sync(canary_jobs(specs))
        if self.canaries is not None:
            self.canaries.set_concurrency(new.monitor.canary.concurrency)
        if self.canaries is not None:
            self.canaries.budget.forget(self._specs)
        for name in removed:
            self._capacity.pop(name, None)
            self.live.remove(name)
            self.probed.discard(name)
            self.alerts.forget(name)
        for spec in specs:
            self.live.track(spec.name, spec.type)
        self.alerts.replace_config_silences(new.alerts.silences)
        self.alerts.rules.policy = alert_policy(new.alerts)
        if new.alerts.webhooks != old.alerts.webhooks or new.alerts.group_wait_s != old.alerts.group_wait_s:
            # unsaved events (waiting in the writer) go to the new webhooks
            await self.alerts.replace_webhooks(new.alerts.webhooks, new.alerts.group_wait_s)
        self.store.configure_writer(**self._writer_settings(new))
        if diff.under("storage.retention"):
            self._retention_rescheduled.set()
        self.rankings.reconfigured(removed)
        if self.api is not None:
            self.api.on_reload(removed)
        return added, removed, changed

    @staticmethod
    def _writer_settings(config: Config) -> dict[str, Any]:
        storage = config.storage
        return {"batch_size": storage.batch_size, "flush_interval_s": storage.flush_interval_s,
                "buffer_limit": storage.buffer_limit, "write_timeout_s": storage.write_timeout_s,
                "max_models_per_provider": config.monitor.max_models,
                "forget_models_after_s": storage.forget_models_after_s}

    async def stop(self) -> None:
        """Stop probing (cancel in-flight probes), flush the store, close the session; in that order.

        Safe after a start that failed part-way: only what was started is stopped.
        """
        if self._scheduler is not None:
            await self._scheduler.shutdown()
        if self._canary_scheduler is not None:
            await self._canary_scheduler.shutdown()
        await self.supervisor.stop()
        if self._cluster is not None:
            try:
                async with asyncio.timeout(STOP_STEP_TIMEOUT_S):  # a silent database must not hold the stop
                    await self._cluster.leave()  # the others take over at their next heartbeat, not after a lease
            except Exception as exc:  # database away: the leases expire instead
                log.warning("cluster.leave_failed", error=type(exc).__name__)
        if self._api_server is not None:
            await self._api_server.close()
        if self.alerts is not None:
            try:
                async with asyncio.timeout(STOP_STEP_TIMEOUT_S):
                    await self.alerts.stop()
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
        best = self.rankings.top().best
        return best.provider if best else None

    def healthy(self) -> bool:
        """The watchdog's question: is the scheduler running and keeping time?"""
        scheduler = self._scheduler
        return scheduler is not None and scheduler.running and scheduler.overdue_s() < 30.0

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

    async def _reload_from_signal(self) -> None:
        self._notifier.reloading()
        try:
            await self.reload()
        finally:
            self._notifier.ready(self.status_line())  # READY=1 always follows RELOADING=1

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT (SIGHUP reloads), stop cleanly. Returns the exit code: 0 after a
        clean stop, 1 when start-up failed (one `daemon.failed` line) or a background task failed."""
        loop = asyncio.get_running_loop()
        if self.install_signal_handlers:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self.request_stop)
            loop.add_signal_handler(signal.SIGHUP, lambda: self.supervisor.spawn(
                "config.reload", self._reload_from_signal(), once=True))
        code = 0
        try:
            try:
                await self.start()
            except StartupError as exc:
                log.error("daemon.failed", step=exc.step, error=str(exc.cause) or type(exc.cause).__name__,
                          error_class=type(exc.cause).__name__)
                return 1
            self._notifier.ready(self.status_line())
            self.supervisor.spawn("systemd.heartbeat", heartbeat(self._notifier, self.status_line, self.healthy))
            await self._stopping.wait()
            if self.supervisor.failed:
                code = 1
                failed = ", ".join(self.supervisor.failed)
                log.error("daemon.failed", step="run", error=f"background task failed: {failed}",
                          error_class="TaskFailed")
        finally:
            self._notifier.stopping()
            await self.stop()
            self._notifier.close()
            if self.install_signal_handlers:
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    with contextlib.suppress(Exception):
                        loop.remove_signal_handler(sig)
        return code


@contextlib.asynccontextmanager
async def _step(name: str) -> AsyncIterator[None]:
    """Turn any error of a start-up step into a StartupError naming the step."""
    try:
        yield
    except Exception as exc:
        raise StartupError(name, exc) from exc
