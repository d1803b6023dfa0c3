"""Prometheus metrics of one server, in a registry of its own (several apps, e.g. in
tests, never share counters)."""

from __future__ import annotations

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServeMetrics:
    """Requests by route and status, latency histograms, queue depth, images, sampler work."""

    def __init__(self, depth_fn=None, running_fn=None):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("difforge_requests", "HTTP requests by route and status code",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("difforge_request_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("difforge_queue_depth", "Jobs waiting for the device", registry=r)
        self.running = Gauge("difforge_running_images", "Images in the batch on the device now", registry=r)
        self.queue_wait = Histogram("difforge_queue_wait_seconds", "Time jobs waited before running",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.images = Counter("difforge_images_generated", "Images produced, by kind of job", ["kind"], registry=r)
        self.sampler_runs = Counter("difforge_sampler_runs", "Sampler runs (one per batch on the device)",
                                    ["kind"], registry=r)
        self.sampler_steps = Counter("difforge_sampler_steps", "Sampler steps taken, over all batches", registry=r)
        self.batch_size = Histogram("difforge_batch_images", "Images per batch on the device",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), registry=r)
        self.rejected = Counter("difforge_rejected", "Requests refused before running, by reason",
                                ["reason"], registry=r)
        if depth_fn is not None:
            self.queue_depth.set_function(depth_fn)
        if running_fn is not None:
            self.running.set_function(running_fn)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
