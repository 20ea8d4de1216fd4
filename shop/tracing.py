"""OpenTelemetry traces, off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``OTEL_TRACES_FILE``) is set.

A span per HTTP request (Django instrumentation), per enqueue and per job run. The enqueue span's
context is stored on the job (``Job.trace_context``, W3C headers) and the worker starts the run span as
its child, so an order's trace holds the request and every job it spawned as one tree; each attempt is
a span of its own with its number, a failure carries the exception. The job side is plugged in through
the lifecycle signals of ``jobs.signals``.
"""

import logging
import math
import os
import threading
import time
from typing import Any

from django.conf import settings

log = logging.getLogger(__name__)

TRACER_NAME = "shop.jobs"
MAX_OPEN_SPANS = 10_000
_state: dict[str, Any] = {}
_running: dict[tuple[int, str | None], Any] = {}  # (job id, lock token): its run's span
_lock = threading.Lock()


def enabled() -> bool:
    return bool(_state)


def setup(exporter=None) -> bool:
    """Install the tracer provider, the Django instrumentation and the job receivers when configured
    (or when given an ``exporter``, as tests do). Returns whether tracing is on."""
    if _state:
        return True
    if exporter is None and not (settings.OTEL_EXPORTER_OTLP_ENDPOINT or settings.OTEL_TRACES_FILE):
        return False
    # Imported here: OpenTelemetry costs some 200 ms at start-up, for nothing when tracing is off.
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    processors = []
    if exporter is not None:
        processors.append(SimpleSpanProcessor(exporter))
    if settings.OTEL_EXPORTER_OTLP_ENDPOINT:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        # The exporter reads the standard OTEL_EXPORTER_OTLP_* variables (endpoint, headers, timeout).
        processors.append(BatchSpanProcessor(OTLPSpanExporter()))
    if settings.OTEL_TRACES_FILE:
        processors.append(SimpleSpanProcessor(_file_exporter(settings.OTEL_TRACES_FILE)))
    provider = trace.get_tracer_provider()
    if not hasattr(provider, "add_span_processor"):  # the API's no-op provider: install the SDK's
        sampler, root = _sampler()
        provider = TracerProvider(
            resource=Resource.create({"service.name": settings.OTEL_SERVICE_NAME}),
            sampler=sampler,
            id_generator=_chosen_ids(),
        )
        provider._shop_root = root  # job runs may decide with it before building a span
        trace.set_tracer_provider(provider)
        provider = trace.get_tracer_provider()
    for processor in processors:
        provider.add_span_processor(processor)
    _state.update(
        provider=provider,
        processors=processors,
        tracer=provider.get_tracer(TRACER_NAME),
        ids=provider.id_generator,
        root=getattr(provider, "_shop_root", None),  # None: another sampler decides, span by span
    )
    _bind_hot_path()
    _instrument_django(provider)
    _connect()
    return True


def teardown() -> None:
    """Undo :func:`setup` (tests): receivers disconnected, instrumentation removed, spans flushed."""
    if not _state:
        return
    _disconnect()
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    DjangoInstrumentor().uninstrument()
    for processor in _state["processors"]:
        processor.shutdown()
    # The provider stays (OpenTelemetry sets it once per process); without processors it exports nothing.
    _state["provider"]._active_span_processor._span_processors = tuple(
        p for p in _state["provider"]._active_span_processor._span_processors if p not in _state["processors"]
    )
    _state.clear()
    _hot.clear()
    _running.clear()


def _sampler():
    """(sampler, root sampler): the standard ``OTEL_TRACES_SAMPLER`` when set (the SDK reads it: None,
    None), else every trace up to TRACE_SAMPLE_PER_SECOND a second, then TRACE_SAMPLE_RATIO of the rest
    up to TRACE_SAMPLE_MAX_PER_SECOND in all, parent-based."""
    if os.environ.get("OTEL_TRACES_SAMPLER"):
        return None, None
    from opentelemetry.sdk.trace.sampling import ParentBased

    root = reservoir_sampler(
        settings.TRACE_SAMPLE_PER_SECOND,
        settings.TRACE_SAMPLE_RATIO,
        ceiling=settings.TRACE_SAMPLE_MAX_PER_SECOND,
    )
    return ParentBased(root=root), root


def reservoir_sampler(per_second: float, ratio: float, clock=time.monotonic, ceiling: float | None = None):
    """A root sampler that keeps every trace up to ``per_second`` a second and ``ratio`` of the rest
    (as AWS X-Ray's reservoir and fixed rate), but no more than ``ceiling`` a second in all (as
    Datadog's rate limit): a small shop keeps every order's trace, a busy one a share of them, and a
    burst of thousands of jobs a second costs at most ``ceiling`` spans a second, not a share of the
    burst. Beyond the reservoir the decision is by trace id, so it is the same wherever it is taken
    (until the ceiling)."""
    ceiling = math.inf if ceiling is None else max(ceiling, per_second)
    from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult, TraceIdRatioBased

    class ReservoirSampler(Sampler):
        def __init__(self) -> None:
            self._beyond = TraceIdRatioBased(ratio)
            self._lock = threading.Lock()
            self._window = -1
            self._taken = 0
            self._decided = _Decided()  # this thread's last decision, by trace id

        def full(self) -> bool:
            """Whether this second's ceiling is reached: every new trace is dropped until the next one
            (most runs of a burst end here, before a trace id is drawn, without the lock)."""
            return self._taken >= ceiling and int(clock()) == self._window

        def decide(self, trace_id: int) -> bool:
            """Whether a new trace with this id is kept, before any span is built; a span then started
            with this trace id is given the same decision (the reservoir counts it once)."""
            if self.full():
                return False
            result = self.should_sample(None, trace_id, "")
            self._decided.trace_id, self._decided.result = trace_id, result
            return result.decision.is_sampled()

        def should_sample(
            self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None
        ):
            if self._decided.trace_id == trace_id:
                self._decided.trace_id = None
                return SamplingResult(self._decided.result.decision, attributes)
            window = int(clock())
            with self._lock:
                if window != self._window:
                    self._window, self._taken = window, 0
                if self._taken < per_second:
                    self._taken += 1
                    return SamplingResult(Decision.RECORD_AND_SAMPLE, attributes)
                if self._taken >= ceiling:
                    return SamplingResult(Decision.DROP)
            result = self._beyond.should_sample(
                parent_context, trace_id, name, kind, attributes, links, trace_state
            )
            if result.decision.is_sampled():
                with self._lock:
                    if self._taken >= ceiling or window != self._window:
                        return SamplingResult(Decision.DROP)
                    self._taken += 1
            return result

        def get_description(self) -> str:
            return f"Reservoir{{{per_second:g}/s, then {ratio:g}, at most {ceiling:g}/s}}"

    return ReservoirSampler()


class _Decided(threading.local):
    trace_id: int | None = None  # a class default: no AttributeError raised and caught per lookup
    result: Any = None


class _Chosen(threading.local):
    trace_id: int | None = None


def _chosen_ids_class():
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class ChosenIds(RandomIdGenerator):
        """Random ids, except a trace id chosen (and sampled) ahead by a job run in this thread."""

        def __init__(self) -> None:
            self.chosen = _Chosen()

        def generate_trace_id(self) -> int:
            trace_id = self.chosen.trace_id
            if trace_id is None:
                return super().generate_trace_id()
            self.chosen.trace_id = None
            return trace_id

    return ChosenIds


def _chosen_ids():
    return _chosen_ids_class()()


def _file_exporter(path: str):
    """Spans as JSON lines appended to ``path`` (the SDK's console exporter writing to a file)."""
    from django.core.exceptions import ImproperlyConfigured
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    try:
        out = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 (open for the process's life)
    except OSError as exc:
        raise ImproperlyConfigured(f"OTEL_TRACES_FILE {path!r} cannot be written: {exc.strerror}.") from None
    return ConsoleSpanExporter(out=out, formatter=lambda span: span.to_json(indent=None) + "\n")


def _instrument_django(provider) -> None:
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    instrumentor = DjangoInstrumentor()
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument(tracer_provider=provider, excluded_urls="healthz,readyz")


# -- the job receivers -----------------------------------------------------------------------------


def _connect() -> None:
    from jobs import signals
    from jobs.models import Job

    for name, receiver in _RECEIVERS.items():
        getattr(signals, name).connect(receiver, sender=Job, dispatch_uid=f"shop.tracing.{name}")


def _disconnect() -> None:
    from jobs import signals
    from jobs.models import Job

    for name in _RECEIVERS:
        getattr(signals, name).disconnect(sender=Job, dispatch_uid=f"shop.tracing.{name}")


def _job_attributes(job) -> dict[str, Any]:
    return {"job.id": job.id or 0, "job.type": job.type, "job.queue": job.queue, "job.attempt": job.attempts}


def annotate(key: str, value: Any) -> None:
    """Set an attribute on the current span (the request's or the job run's)."""
    from opentelemetry import trace

    span = trace.get_current_span()
    if span.is_recording():
        span.set_attribute(key, value)


def _bind_hot_path() -> None:
    """What every job run calls, looked up once: an import statement in a receiver costs a few
    microseconds per job, which a drain of no-op jobs feels."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    unsampled = trace.TraceFlags(trace.TraceFlags.DEFAULT)
    ids = _state["ids"]
    dropped = trace.NonRecordingSpan(
        trace.SpanContext(ids.generate_trace_id(), ids.generate_span_id(), False, unsampled)
    )
    _hot.update(
        attach=otel_context.attach,
        current=otel_context.get_current,
        dropped=trace.set_span_in_context(dropped, otel_context.Context()),
        context=trace.SpanContext,
        non_recording=trace.NonRecordingSpan,
        current_span=trace.get_current_span,
        unsampled=unsampled,
        in_context=trace.set_span_in_context,
        propagator=TraceContextTextMapPropagator(),
        producer=SpanKind.PRODUCER,
        consumer=SpanKind.CONSUMER,
        ok=Status(StatusCode.OK),
        error_status=lambda error: Status(StatusCode.ERROR, type(error).__name__),
    )


_hot: dict[str, Any] = {}


def on_enqueuing(sender, job, **kwargs) -> None:
    """A short span for the enqueue, whose context the job carries to its run (W3C ``traceparent``:
    the run inherits the sampling decision, so a trace is kept or dropped whole). Inside a dropped
    trace (most requests under load) no span is built: the job carries the dropped context as it is."""
    current = _hot["current_span"]().get_span_context()
    span = None
    # Only under the shop's parent-based sampler: another (OTEL_TRACES_SAMPLER) may keep a child of a
    # dropped parent, and is given the span to decide on.
    if not (current.is_valid and not current.trace_flags.sampled and _state["root"] is not None):
        span = _state["tracer"].start_span(
            f"enqueue {job.type}",
            kind=_hot["producer"],
            attributes={"job.type": job.type, "job.queue": job.queue},
        )
    carrier: dict[str, str] = {}
    _hot["propagator"].inject(carrier, context=None if span is None else _hot["in_context"](span))
    job.trace_context = carrier
    if span is not None:
        span.end()


def on_started(sender, job, **kwargs) -> None:
    """The run's span, child of the enqueue span, current for the handler (whose context is its own:
    see jobs.execution.run, so nothing needs detaching). A run the sampler drops is still current (its
    jobs inherit the decision) but is not kept for an outcome."""
    root = _state.get("root")
    parent = _hot["propagator"].extract(job.trace_context) if job.trace_context else None
    if root is not None:
        # Decided before any span is built: a run dropped by the sampler (most, under load) costs a
        # context and no span. It stays current all the same, so that what its handler does and the
        # jobs it enqueues follow the decision (a trace is kept or dropped whole).
        current = _hot["current_span"](parent)  # without a stored context: the caller's, if any
        if not current.get_span_context().is_valid:
            ids = _state["ids"]
            if root.full():
                _drop_run(ids, None)
                return
            trace_id = ids.generate_trace_id()
            if not root.decide(trace_id):
                _drop_run(ids, trace_id)
                return
            ids.chosen.trace_id = trace_id  # the span below takes it, and the decision with it
        elif not current.get_span_context().trace_flags.sampled:
            if parent is not None:
                _hot["attach"](parent)  # the enqueue was dropped: so is its run
            return
    span = _state["tracer"].start_span(
        f"run {job.type}",
        context=parent,
        kind=_hot["consumer"],
        attributes={**_job_attributes(job), "job.worker": job.locked_by or ""},
    )
    if span.is_recording():
        with _lock:
            _running[(job.id, job.lock_token)] = span
            if len(_running) > MAX_OPEN_SPANS:
                # A job whose claim was lost sends no outcome: its span is dropped, oldest first.
                _running.pop(next(iter(_running))).end()
    _hot["attach"](_hot["in_context"](span))


def _drop_run(ids, trace_id: int | None) -> None:
    """Make current a span that is not recorded, so that the run's jobs inherit the decision. In a job's
    own empty context (a worker's run) it is one context built at setup, shared by every dropped run: a
    dropped trace's ids are never exported nor logged, and building them cost a run a few microseconds
    (most runs of a burst are dropped)."""
    if not _hot["current"]():
        _hot["attach"](_hot["dropped"])
        return
    if trace_id is None:
        trace_id = ids.generate_trace_id()
    dropped = _hot["context"](trace_id, ids.generate_span_id(), False, _hot["unsampled"])
    _hot["attach"](_hot["in_context"](_hot["non_recording"](dropped)))


def _finish(job, error: BaseException | None = None, **attributes: Any) -> None:
    if not _running:
        return
    with _lock:
        span = _running.pop((job.id, job.lock_token), None)
    if span is None:
        return  # not sampled, started elsewhere (a job reaped from a lost worker) or before tracing
    for key, value in attributes.items():
        span.set_attribute(key, value)
    if error is None:
        span.set_status(_hot["ok"])
    else:
        span.record_exception(error)
        span.set_status(_hot["error_status"](error))
    span.end()


def on_succeeded(sender, job, **kwargs) -> None:
    _finish(job, **{"job.outcome": "succeeded"})


def on_failed(sender, job, error=None, **kwargs) -> None:
    _finish(job, error, **{"job.outcome": "retry"})


def on_dead(sender, job, error=None, **kwargs) -> None:
    _finish(job, error, **{"job.outcome": "dead"})


def on_snoozed(sender, job, seconds=None, **kwargs) -> None:
    _finish(job, **{"job.outcome": "snoozed", "job.snooze_seconds": seconds})


_RECEIVERS = {
    "job_enqueuing": on_enqueuing,
    "job_started": on_started,
    "job_succeeded": on_succeeded,
    "job_failed": on_failed,
    "job_dead": on_dead,
    "job_snoozed": on_snoozed,
}
