"""Every Prometheus metric name glowplug exports, with its labels and buckets.

One module so that the activator, the operator, the Grafana dashboard and the
recording rules cannot drift apart: the dashboard test checks every query against
``ALL_METRICS``. Components create their collectors from these constants.
"""

from __future__ import annotations

PREFIX = "glowplug_"

# Labels shared by every per-service series.
SERVICE_LABELS = ("namespace", "service")

# --- activator -------------------------------------------------------------------------
REQUESTS_TOTAL = "glowplug_requests_total"  # counter {namespace, service, code, path}
REQUEST_DURATION = "glowplug_request_duration_seconds"  # histogram {namespace, service, path}
ACTIVATOR_OVERHEAD = "glowplug_activator_overhead_seconds"  # histogram {namespace, service}
QUEUE_WAIT = "glowplug_queue_wait_seconds"  # histogram {namespace, service}
QUEUED_REQUESTS = "glowplug_queued_requests"  # gauge {namespace, service}
INFLIGHT_REQUESTS = "glowplug_inflight_requests"  # gauge {namespace, service}
EMBEDDINGS_TOTAL = "glowplug_embeddings_total"  # counter {namespace, service}: inputs embedded
ACTIVATOR_WAKES_TOTAL = "glowplug_activator_wakes_total"  # counter {namespace, service, outcome}
ACTIVATOR_WAKE_DURATION = "glowplug_activator_wake_duration_seconds"  # histogram
REJECTED_TOTAL = "glowplug_rejected_requests_total"  # counter {namespace, service, reason}
# The embedding cache (docs/activator.md). Hits and misses count inputs, not requests.
CACHE_HITS_TOTAL = "glowplug_cache_hits_total"  # counter {namespace, service, tier=memory|shared}
CACHE_MISSES_TOTAL = "glowplug_cache_misses_total"  # counter {namespace, service}
CACHE_BYTES = "glowplug_cache_bytes"  # gauge {namespace, service}: this replica's memory tier
# Requests answered wholly from the cache while no replica was ready.
CACHE_SERVED_AT_ZERO_TOTAL = "glowplug_cache_served_at_zero_total"  # counter {namespace, service}
# Wakes those requests would have caused under the service's idleTimeout.
CACHE_WAKES_AVOIDED_TOTAL = "glowplug_cache_wakes_avoided_total"  # counter {namespace, service}
CACHE_SHARED_ERRORS_TOTAL = "glowplug_cache_shared_errors_total"  # counter: Redis calls failed
# Per API key ("namespace/name" of its Secret, "none" without a valid key; never the key).
KEY_REQUESTS_TOTAL = "glowplug_api_key_requests_total"  # counter {key, code}
KEY_INPUTS_TOTAL = "glowplug_api_key_inputs_total"  # counter {key}: inputs embedded
KEY_REJECTED_TOTAL = "glowplug_api_key_rejected_total"  # counter {key, reason}

# --- operator --------------------------------------------------------------------------
GPU_SECONDS_TOTAL = "glowplug_gpu_seconds_total"  # counter {namespace, service, gpu_type}
BASELINE_GPU_SECONDS_TOTAL = "glowplug_baseline_gpu_seconds_total"  # counter, same labels
GPU_HOURLY_PRICE = "glowplug_gpu_hourly_price_dollars"  # gauge {namespace, service, gpu_type}
REPLICAS = "glowplug_replicas"  # gauge {namespace, service, state=desired|ready}
WAKE_DURATION = "glowplug_wake_duration_seconds"  # histogram {namespace, service}
# histogram {namespace, service, phase=node|image|engine|first_response}: seconds per phase
WAKE_PHASE_DURATION = "glowplug_wake_phase_duration_seconds"
WAKES_TOTAL = "glowplug_wakes_total"  # counter {namespace, service, outcome=ready|failed}
SERVICE_INFO = "glowplug_service_info"  # gauge {namespace, service, model, engine, gpu_type}
AUTOSCALER_STATS_ERRORS = "glowplug_autoscaler_stats_errors_total"  # counter {activator}
# The service loops' ticks, all services (counter), and the timers pending (gauge): an
# idle fleet at zero ticks not at all and holds no timer (operator/timers.py).
AUTOSCALER_TICKS = "glowplug_autoscaler_ticks_total"
AUTOSCALER_TIMERS = "glowplug_autoscaler_timers"
# GPU_SECONDS_TOTAL split by API key (operator/attribution.py); key: "namespace/name" of
# the key's Secret, or "unattributed". Only services called with API keys have series.
GPU_SECONDS_ATTRIBUTED_TOTAL = "glowplug_gpu_seconds_attributed_total"  # {namespace, service, key}

ALL_METRICS = (
    REQUESTS_TOTAL,
    REQUEST_DURATION,
    ACTIVATOR_OVERHEAD,
    QUEUE_WAIT,
    QUEUED_REQUESTS,
    INFLIGHT_REQUESTS,
    EMBEDDINGS_TOTAL,
    ACTIVATOR_WAKES_TOTAL,
    ACTIVATOR_WAKE_DURATION,
    REJECTED_TOTAL,
    CACHE_HITS_TOTAL,
    CACHE_MISSES_TOTAL,
    CACHE_BYTES,
    CACHE_SERVED_AT_ZERO_TOTAL,
    CACHE_WAKES_AVOIDED_TOTAL,
    CACHE_SHARED_ERRORS_TOTAL,
    KEY_REQUESTS_TOTAL,
    KEY_INPUTS_TOTAL,
    KEY_REJECTED_TOTAL,
    GPU_SECONDS_TOTAL,
    BASELINE_GPU_SECONDS_TOTAL,
    GPU_HOURLY_PRICE,
    REPLICAS,
    WAKE_DURATION,
    WAKE_PHASE_DURATION,
    WAKES_TOTAL,
    SERVICE_INFO,
    AUTOSCALER_STATS_ERRORS,
    AUTOSCALER_TICKS,
    AUTOSCALER_TIMERS,
    GPU_SECONDS_ATTRIBUTED_TOTAL,
)

# Explicit buckets: prometheus-client's defaults stop at 10 s, and a GPU cold start
# (node provisioning, image pull, weight load) takes from seconds to many minutes.
WAKE_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900, 1200)
# Phases run from milliseconds (first response after ready, a cached image) to minutes.
WAKE_PHASE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200)
# The phase label values, in wake order.
WAKE_PHASE_LABELS = ("node", "image", "engine", "first_response")
QUEUE_WAIT_BUCKETS = (0.001, 0.01, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 900)
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5)
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900)
